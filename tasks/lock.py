"""One run at a time per destination: a lock record kept alive by a heartbeat.

The record is `lock.json` in the destination's state folder (`tasks.state.state_folder`,
`PARENT/_batch-enrich/NAME/` for destination `PARENT/NAME`), beside the rest of its state.

Two runs writing one destination would submit the same shards twice (both find them unsent)
and race on the output. The lock is taken before the run touches its state and released when
it ends, successfully or not. A run that died without releasing it (SIGKILL, a lost machine)
leaves a record whose heartbeat stops; the next run takes it over:

- at once if the holder ran on the same host and its process is gone, or if it is the same
  Prefect flow run (a retry of the run);
- otherwise once the heartbeat is older than `stale_after_seconds`, waiting for that long.

A live holder keeps its heartbeat fresh, so a second run waits `wait_seconds` and then fails
with an error that names the holder, before anything is paid for.

The lock is taken with a create-if-absent write, which the storage decides atomically: an
`O_EXCL` open locally, a PUT with `If-None-Match: *` on S3. Of two runs racing to start, the
storage lets exactly one create the record; the other sees the winner's record. Taking over a
dead holder's record goes through the same primitive: the run that creates the claim
`lock.takeover-<holder token>-<heartbeat>` next to it is the only one that may replace that
exact record, so two runs finding the same dead holder cannot both take it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import fsspec

from tasks.state import state_root
from tasks.storage import (
    StorageSettings,
    filesystem,
    is_local,
    join,
    read_bytes,
    remove,
    write_json_atomic,
)

LOCK_FILE = "lock.json"
TAKEOVER_PREFIX = "lock.takeover-"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 120.0
# Locally the record is written right after its exclusive create: a reader may meet the file
# empty for that instant. A record unreadable for longer than this was left half-written.
_UNREADABLE_GRACE_SECONDS = 2.0

log = logging.getLogger(__name__)


class DestinationBusyError(RuntimeError):
    """Another run holds the destination; the message names it and what to do."""


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `path` only if it does not exist; False when it already did.

    The storage decides, so of several writers racing for one path exactly one gets True.
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return True
    try:
        # s3fs sends `If-None-Match: *`; S3 answers 412 if the key exists.
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


@dataclass(frozen=True)
class LockRecord:
    token: str
    flow_run_id: str
    host: str
    pid: int
    acquired_at: float
    heartbeat_at: float

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> LockRecord | None:
        try:
            return cls(
                token=str(payload["token"]),
                flow_run_id=str(payload.get("flow_run_id") or ""),
                host=str(payload["host"]),
                pid=int(payload["pid"]),
                acquired_at=float(payload["acquired_at"]),
                heartbeat_at=float(payload["heartbeat_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def unreadable(cls, modified_at: float) -> LockRecord:
        """A record that cannot be parsed still holds the lock, aged by its modification time."""
        return cls(
            token=f"unreadable-{modified_at:.3f}",
            flow_run_id="",
            host="",
            pid=0,
            acquired_at=modified_at,
            heartbeat_at=modified_at,
        )

    @property
    def is_unreadable(self) -> bool:
        return self.token.startswith("unreadable-")

    def describe(self, now: float) -> str:
        age = max(0.0, now - self.heartbeat_at)
        if self.is_unreadable:
            return f"an unreadable lock record (written {age:.0f} s ago)"
        run = f"flow run {self.flow_run_id}" if self.flow_run_id else "a run outside Prefect"
        return f"{run} (host {self.host}, pid {self.pid}, last heartbeat {age:.0f} s ago)"


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    # A killed process its parent has not reaped yet still answers; on Linux it shows as Z.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def gone_reason(holder: LockRecord, now: float, stale_after_seconds: float) -> str | None:
    """Why the holder of a lock record is dead, or None while it may be alive."""
    if holder.host == socket.gethostname() and _process_is_gone(holder.pid):
        return f"left by process {holder.pid}, which is gone"
    if now - holder.heartbeat_at > stale_after_seconds:
        return f"stale: no heartbeat for {now - holder.heartbeat_at:.0f} s"
    return None


def read_lock(destination: str, settings: StorageSettings | None = None) -> LockRecord | None:
    """The record of the run holding `destination` now, if any (nothing is taken)."""
    return DestinationLock(destination, settings)._read()


class DestinationLock:
    """Hold the destination's `lock.json` (in its state folder) for a `with` block."""

    def __init__(
        self,
        destination: str,
        settings: StorageSettings | None = None,
        flow_run_id: str = "",
        *,
        heartbeat_seconds: float | None = None,
        stale_after_seconds: float | None = None,
        wait_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.destination = destination
        self.fs, root = filesystem(destination, settings)
        self.path = join(state_root(root), LOCK_FILE)
        self.flow_run_id = flow_run_id
        # Module defaults are read here, not bound at import, so they can be tuned (tests do).
        self.heartbeat_seconds = heartbeat_seconds or HEARTBEAT_SECONDS
        self.stale_after_seconds = stale_after_seconds or STALE_AFTER_SECONDS
        self.wait_seconds = (
            self.stale_after_seconds + self.heartbeat_seconds
            if wait_seconds is None
            else wait_seconds
        )
        self._clock = clock
        self._log = logger or log
        self._token = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._acquired_at = 0.0
        self._claim: str | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ records

    def _modified_at(self) -> float:
        try:
            return self.fs.modified(self.path).timestamp()
        except (OSError, NotImplementedError):
            return self._clock()

    def _read(self) -> LockRecord | None:
        """The current record; None when there is none."""
        while True:
            try:
                raw = read_bytes(self.fs, self.path)
            except FileNotFoundError:
                return None
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            record = LockRecord.from_json(payload) if isinstance(payload, dict) else None
            if record is not None:
                return record
            modified_at = self._modified_at()
            if time.time() - modified_at > _UNREADABLE_GRACE_SECONDS:
                return LockRecord.unreadable(modified_at)
            time.sleep(0.02)  # most likely a record being written right now: look again

    def _record(self) -> dict[str, Any]:
        now = self._clock()
        return asdict(
            LockRecord(
                token=self._token,
                flow_run_id=self.flow_run_id,
                host=self._host,
                pid=os.getpid(),
                acquired_at=self._acquired_at or now,
                heartbeat_at=now,
            )
        )

    def _write(self) -> None:
        write_json_atomic(self.fs, self.path, self._record())

    def _create(self) -> bool:
        self._acquired_at = self._clock()
        data = json.dumps(self._record(), sort_keys=True, indent=1).encode()
        return create_exclusive(self.fs, self.path, data)

    def _take_over(self, holder: LockRecord) -> bool:
        """Replace exactly `holder`'s record, unless another run is replacing it too."""
        claim = posixpath.join(
            posixpath.dirname(self.path),
            f"{TAKEOVER_PREFIX}{holder.token}-{round(holder.heartbeat_at * 1000)}",
        )
        if not create_exclusive(self.fs, claim, self._token.encode()):
            return False
        current = self._read()
        if current != holder:
            # The record changed since we judged it (its holder beat, or it was freed and
            # created anew): that record is not ours to replace. Look again.
            remove(self.fs, claim)
            return False
        self._claim = claim
        self._acquired_at = self._clock()
        self._write()
        return True

    def _takeover_reason(self, holder: LockRecord) -> str | None:
        """Why this run may take the lock now, or None if it must wait."""
        if self.flow_run_id and holder.flow_run_id == self.flow_run_id:
            return "left by an earlier attempt of this flow run"
        return gone_reason(holder, self._clock(), self.stale_after_seconds)

    # ------------------------------------------------------------------ lifecycle

    def acquire(self) -> None:
        deadline = self._clock() + self.wait_seconds
        announced = False
        while True:
            holder = self._read()
            if holder is None:
                if self._create():
                    break
                continue  # another run created it first: look at who
            if holder.token == self._token:
                break
            reason = self._takeover_reason(holder)
            if reason is not None:
                if self._take_over(holder):
                    self._log.warning(
                        "took over the lock of %s: %s", holder.describe(self._clock()), reason
                    )
                    break
                holder = self._read() or holder  # who won the takeover, if it is done
            now = self._clock()
            if now >= deadline:
                raise DestinationBusyError(
                    f"destination {self.destination!r} is being written by "
                    f"{holder.describe(now)}. Two runs on one destination would pay twice for "
                    "the same batches, so this run stops before sending anything: wait for that "
                    "run to finish, or cancel it. If it is dead, its lock "
                    f"({self.path}) is taken over once its heartbeat is "
                    f"{self.stale_after_seconds:.0f} s old; deleting that file frees it now."
                )
            if not announced:
                self._log.warning(
                    "destination %r is held by %s; waiting up to %.0f s for it",
                    self.destination,
                    holder.describe(now),
                    deadline - now,
                )
                announced = True
            # A takeover another run is in the middle of finishes in moments.
            pause = 0.05 if reason is not None else min(5.0, max(0.05, deadline - now))
            time.sleep(pause)
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name="destination-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                current = self._read()
                if current is None or current.token != self._token:
                    self._lost.set()
                    self._log.error(
                        "lost the lock on %r: %s",
                        self.destination,
                        "it was removed"
                        if current is None
                        else f"taken over by {current.describe(self._clock())}",
                    )
                    return
                self._write()
            except Exception as exc:  # a missed beat is retried at the next one
                self._log.warning("could not renew the lock on %r: %s", self.destination, exc)

    def ensure_held(self) -> None:
        """Raise if another run took the lock over (this one looked dead to it)."""
        if self._lost.is_set():
            raise DestinationBusyError(
                f"this run lost its lock on {self.destination!r} to another run (its heartbeat "
                f"was older than {self.stale_after_seconds:.0f} s); it stops so the two do not "
                "send the same batches. Rerun once the other run has finished."
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            current = self._read()
            if current is not None and current.token == self._token:
                remove(self.fs, self.path)
            if self._claim is not None:
                # Only after the record it guarded is gone: a late run still holding a view
                # of that old record then finds it replaced and does not take it over.
                remove(self.fs, self._claim)
                self._claim = None
        except Exception as exc:  # never hide the run's own outcome behind this
            self._log.warning("could not release the lock on %r: %s", self.destination, exc)

    def __enter__(self) -> DestinationLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.release()
