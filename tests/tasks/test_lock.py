"""One run per destination: the lock record, its heartbeat, and when it is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.lock import DestinationBusyError, DestinationLock


def lock_file(destination: Path) -> Path:
    return destination / "_state" / "lock.json"


def write_record(destination: Path, **fields: object) -> None:
    record = {
        "token": "someone-else",
        "flow_run_id": "run-of-someone-else",
        "host": "another-host",
        "pid": 4242,
        "acquired_at": time.time(),
        "heartbeat_at": time.time(),
    }
    record.update(fields)
    lock_file(destination).parent.mkdir(parents=True, exist_ok=True)
    lock_file(destination).write_text(json.dumps(record))


def test_acquire_writes_who_holds_it_and_release_removes_it(tmp_path: Path) -> None:
    with DestinationLock(str(tmp_path), flow_run_id="run-1"):
        record = json.loads(lock_file(tmp_path).read_text())
        assert record["flow_run_id"] == "run-1"
        assert record["pid"] == os.getpid()
    assert not lock_file(tmp_path).exists()


def test_a_live_holder_is_named_and_the_second_run_stops(tmp_path: Path) -> None:
    with DestinationLock(str(tmp_path), flow_run_id="nightly", heartbeat_seconds=0.1):
        second = DestinationLock(str(tmp_path), flow_run_id="on-demand", wait_seconds=0.5)
        with pytest.raises(DestinationBusyError) as caught:
            second.acquire()
        message = str(caught.value)
        assert "flow run nightly" in message and f"pid {os.getpid()}" in message
        assert "pay twice" in message and "cancel it" in message
        assert json.loads(lock_file(tmp_path).read_text())["flow_run_id"] == "nightly"


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    write_record(tmp_path, host=socket.gethostname(), pid=int(gone.stdout))
    # wait_seconds=0: it can only succeed by taking over, never by waiting.
    with DestinationLock(str(tmp_path), flow_run_id="rerun", wait_seconds=0):
        assert json.loads(lock_file(tmp_path).read_text())["flow_run_id"] == "rerun"


def test_another_host_is_waited_for_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    write_record(tmp_path, heartbeat_at=time.time())
    fresh = DestinationLock(str(tmp_path), stale_after_seconds=60, wait_seconds=0)
    with pytest.raises(DestinationBusyError, match="another-host"):
        fresh.acquire()

    write_record(tmp_path, heartbeat_at=time.time() - 61)
    with DestinationLock(str(tmp_path), stale_after_seconds=60, wait_seconds=0):
        assert json.loads(lock_file(tmp_path).read_text())["pid"] == os.getpid()


def test_a_retry_of_the_same_flow_run_takes_its_own_lock_back(tmp_path: Path) -> None:
    write_record(tmp_path, flow_run_id="run-7")
    with DestinationLock(str(tmp_path), flow_run_id="run-7", wait_seconds=0):
        assert json.loads(lock_file(tmp_path).read_text())["pid"] == os.getpid()


def test_heartbeat_renews_and_a_lost_lock_is_noticed(tmp_path: Path) -> None:
    lock = DestinationLock(str(tmp_path), heartbeat_seconds=0.05)
    with lock:
        first = json.loads(lock_file(tmp_path).read_text())["heartbeat_at"]
        deadline = time.monotonic() + 10
        while json.loads(lock_file(tmp_path).read_text())["heartbeat_at"] == first:
            assert time.monotonic() < deadline, "the heartbeat never renewed the record"
            time.sleep(0.02)
        lock.ensure_held()

        write_record(tmp_path, token="took-over")
        while True:
            try:
                lock.ensure_held()
            except DestinationBusyError as exc:
                assert "lost its lock" in str(exc)
                break
            assert time.monotonic() < deadline, "the lost lock was never noticed"
            time.sleep(0.02)
    # Releasing a lock taken over by another run leaves that run's record alone.
    assert json.loads(lock_file(tmp_path).read_text())["token"] == "took-over"


def test_a_lock_on_s3(s3_bucket: str, moto_server: str) -> None:
    from pydantic import SecretStr

    from tasks.storage import StorageSettings, filesystem

    settings = StorageSettings(
        endpoint_url=moto_server,
        region="us-east-1",
        access_key_id=SecretStr("testing"),
        secret_access_key=SecretStr("testing"),
    )
    destination = f"s3://{s3_bucket}/enriched"
    fs, _ = filesystem(destination, settings)
    with DestinationLock(destination, settings, flow_run_id="s3-run"):
        record = json.loads(fs.cat_file(f"{s3_bucket}/enriched/_state/lock.json"))
        assert record["flow_run_id"] == "s3-run"
        with pytest.raises(DestinationBusyError):
            DestinationLock(destination, settings, wait_seconds=0).acquire()
    assert not fs.exists(f"{s3_bucket}/enriched/_state/lock.json")


def test_a_killed_process_not_yet_reaped_counts_as_gone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        write_record(tmp_path, host=socket.gethostname(), pid=child.pid)
        with DestinationLock(str(tmp_path), wait_seconds=0):
            assert json.loads(lock_file(tmp_path).read_text())["pid"] == os.getpid()
    finally:
        child.wait()
