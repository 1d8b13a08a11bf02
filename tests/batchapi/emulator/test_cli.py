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
import pytest

from batchapi.emulator.__main__ import config_from, main, parse_args
from batchapi.models import Batch, RequestLine, Revision, SummarizeBody

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


def test_flags_map_onto_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCH_API_KEY", raising=False)
    args = parse_args(
        ["--revision", "A", "--latency", "2", "--latency-jitter", "0.5", "--straggler-share",
         "0.1", "--straggler-factor", "8", "--max-open-batches", "3", "--open-cap-retry-after",
         "2", "--no-batch-router"]
    )  # fmt: skip
    config = config_from(args)
    assert config.revision is Revision.A and config.line_limit is None
    assert (config.latency, config.latency_jitter) == (2.0, 0.5)
    assert (config.straggler_share, config.straggler_factor) == (0.1, 8.0)
    assert (config.max_open_batches, config.open_cap_retry_after) == (3, 2)
    assert config.batch_router_configured is False
    defaults = config_from(parse_args([]))
    assert defaults.revision is Revision.B and defaults.line_limit == 50
    assert defaults.max_open_batches is None and defaults.latency_jitter == 0.0


def test_conflicting_flags_exit_2_without_showing_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCH_API_KEY", "cli-secret-key")
    assert main(["--no-batch-router"]) == 2
    err = capsys.readouterr().err
    assert "revision B documents no 503" in err
    assert "cli-secret-key" not in err
