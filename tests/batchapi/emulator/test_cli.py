"""`python -m batchapi.emulator` as a real subprocess: ready line, one request, SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from batchapi.models import Batch, RequestLine, SummarizeBody

READY = "batch-enrich emulator listening on "
ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "BATCH_API_KEY": "cli-secret-key"}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchapi.emulator", "--port", str(port),
         "--db", str(tmp_path / "cli.sqlite3"), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, stdout), daemon=True).start()
    try:
        line = stdout.get(timeout=20)
        assert line.strip() == f"{READY}http://127.0.0.1:{port}"
        base_url = line.strip().removeprefix(READY)

        with httpx.Client(base_url=base_url, headers={"x-api-key": "cli-secret-key"}) as client:
            assert client.get("/v1/batches/x", headers={"x-api-key": "wrong"}).status_code == 401
            line_json = RequestLine(custom_id="only", body=SummarizeBody(text="Hello there. Bye."))
            created = client.post("/v1/batches", content=line_json.to_json())
            assert created.status_code == 200
            batch_id = created.json()["id"]
            deadline = time.monotonic() + 10
            while True:
                batch = Batch.model_validate(client.get(f"/v1/batches/{batch_id}").json())
                if batch.is_terminal:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert batch.request_counts.completed == 1
            assert client.get(f"/v1/batches/{batch_id}/output").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        stderr = process.stderr.read() if process.stderr else ""
    assert returncode == 0, stderr
    assert "cli-secret-key" not in line + stderr
    assert (tmp_path / "cli.sqlite3").exists()
