"""One run per destination: the lock record, its heartbeat, and when it is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
from pydantic import SecretStr

from tasks.lock import DestinationBusyError, DestinationLock, LockRecord, create_exclusive
from tasks.state import state_folder, state_root
from tasks.storage import StorageSettings, filesystem


def lock_file(destination: Path) -> Path:
    return Path(state_folder(str(destination))) / "lock.json"


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


def moto_settings(endpoint: str) -> StorageSettings:
    return StorageSettings(
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id=SecretStr("testing"),
        secret_access_key=SecretStr("testing"),
    )


def test_a_lock_on_s3(s3_bucket: str, moto_server: str) -> None:
    settings = moto_settings(moto_server)
    destination = f"s3://{s3_bucket}/enriched"
    fs, _ = filesystem(destination, settings)
    with DestinationLock(destination, settings, flow_run_id="s3-run"):
        record = json.loads(fs.cat_file(f"{s3_bucket}/_batch-enrich/enriched/lock.json"))
        assert record["flow_run_id"] == "s3-run"
        with pytest.raises(DestinationBusyError):
            DestinationLock(destination, settings, wait_seconds=0).acquire()
    assert not fs.exists(f"{s3_bucket}/_batch-enrich/enriched/lock.json")


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


def race(contenders: list[DestinationLock]) -> list[DestinationLock]:
    """Start `acquire` on every contender at the same moment; the ones that got the lock."""
    start = threading.Barrier(len(contenders))
    winners: list[DestinationLock] = []
    refused: list[DestinationBusyError] = []

    def run(lock: DestinationLock) -> None:
        start.wait()
        try:
            lock.acquire()
        except DestinationBusyError as exc:
            refused.append(exc)
        else:
            winners.append(lock)

    threads = [threading.Thread(target=run, args=(lock,)) for lock in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) + len(refused) == len(contenders)
    for exc in refused:
        assert "being written by" in str(exc)
    return winners


@dataclass
class Destination:
    url: str
    settings: StorageSettings | None

    @property
    def state(self) -> str:
        return state_root(filesystem(self.url, self.settings)[1])

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return filesystem(self.url, self.settings)[0]

    def record(self) -> dict[str, object]:
        return json.loads(self.fs.cat_file(f"{self.state}/lock.json"))

    def runs(self, count: int) -> list[DestinationLock]:
        """Runs that all start on this destination without waiting (`wait_seconds=0`)."""
        return [
            DestinationLock(self.url, self.settings, flow_run_id=f"run-{i}", wait_seconds=0)
            for i in range(count)
        ]


@pytest.fixture(params=["local", "s3"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    if request.param == "local":
        return Destination(str(tmp_path / "out"), None)
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Destination(f"s3://{bucket}/out", moto_settings(endpoint))


def test_runs_racing_to_start_on_one_destination_let_exactly_one_proceed(
    destination: Destination,
) -> None:
    for _ in range(3):
        (winner,) = race(destination.runs(6))
        assert destination.record()["flow_run_id"] == winner.flow_run_id
        winner.release()
    assert not destination.fs.exists(f"{destination.state}/lock.json")


class LateLook(DestinationLock):
    """A run whose first look found the destination free, but that acts on it only after
    another run has taken the lock (a slow network, a paused process)."""

    def __init__(self, destination: Destination, other_holds: threading.Event) -> None:
        super().__init__(destination.url, destination.settings, "late", wait_seconds=0)
        self.other_holds = other_holds
        self.looked = False

    def _read(self) -> LockRecord | None:
        record = super()._read()
        if not self.looked:
            self.looked = True
            assert record is None
            assert self.other_holds.wait(timeout=60)
        return record


def test_a_run_that_found_the_lock_free_a_moment_too_early_does_not_proceed(
    destination: Destination,
) -> None:
    other_holds = threading.Event()
    late = LateLook(destination, other_holds)
    outcome: list[BaseException | None] = []

    def start_late() -> None:
        try:
            late.acquire()
        except DestinationBusyError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=start_late)
    thread.start()
    deadline = time.monotonic() + 60
    while not late.looked:
        assert time.monotonic() < deadline, "the late run never looked at the lock"
        time.sleep(0.01)
    with DestinationLock(destination.url, destination.settings, "first", wait_seconds=0):
        other_holds.set()
        thread.join()
        assert destination.record()["flow_run_id"] == "first"
    (refused,) = outcome
    assert isinstance(refused, DestinationBusyError) and "flow run first" in str(refused)


def test_runs_racing_to_take_over_a_dead_holder_let_exactly_one_proceed(
    destination: Destination,
) -> None:
    dead = {
        "token": "dead-run",
        "flow_run_id": "dead",
        "host": "another-host",
        "pid": 4242,
        "acquired_at": time.time() - 1000,
        "heartbeat_at": time.time() - 1000,
    }
    fs = destination.fs
    fs.mkdirs(destination.state, exist_ok=True)
    fs.pipe_file(f"{destination.state}/lock.json", json.dumps(dead).encode())
    (winner,) = race(destination.runs(6))
    assert destination.record()["flow_run_id"] == winner.flow_run_id
    winner.release()
    # Its takeover claim goes with the lock, leaving nothing behind.
    assert fs.find(destination.state) == []


def test_create_exclusive_writes_once_and_keeps_the_first(destination: Destination) -> None:
    path = f"{destination.state}/claim"
    assert create_exclusive(destination.fs, path, b"first") is True
    assert create_exclusive(destination.fs, path, b"second") is False
    assert destination.fs.cat_file(path) == b"first"


def test_an_unreadable_record_holds_until_it_is_stale(tmp_path: Path) -> None:
    lock_file(tmp_path).parent.mkdir(parents=True)
    lock_file(tmp_path).write_bytes(b"")
    written = time.time() - 30  # past the moment a record is being written, not yet stale
    os.utime(lock_file(tmp_path), (written, written))
    with pytest.raises(DestinationBusyError, match="unreadable lock record"):
        DestinationLock(str(tmp_path), stale_after_seconds=60, wait_seconds=0).acquire()

    os.utime(lock_file(tmp_path), (written - 60, written - 60))
    with DestinationLock(
        str(tmp_path), flow_run_id="after", stale_after_seconds=60, wait_seconds=0
    ):
        assert json.loads(lock_file(tmp_path).read_text())["flow_run_id"] == "after"
