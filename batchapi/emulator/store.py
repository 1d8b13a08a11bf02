"""SQLite persistence of batches, their raw request lines and their output.

One connection guarded by a lock: every operation is a short statement or one transaction,
and the engine never runs while the lock is held. A batch's output is written as one JSONL
blob in the same transaction that makes the batch terminal, so a restarted emulator sees a
batch either unfinished (and resumes it) or finished with all of its output.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from batchapi.models import Batch, BatchStatus, RequestCounts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    visible_at REAL,
    request BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE INDEX IF NOT EXISTS batches_visible_at ON batches (visible_at);
CREATE TABLE IF NOT EXISTS outputs (
    batch_id TEXT PRIMARY KEY REFERENCES batches (id),
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS custom_ids (
    custom_id TEXT PRIMARY KEY,
    batches INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_BATCH_COLUMNS = "seq, id, created_at, status, total, completed, failed, started_at, visible_at"
_UNFINISHED = (BatchStatus.VALIDATING.value, BatchStatus.IN_PROGRESS.value)
# Open as a client sees it: unfinished, or finished but still shown in progress (latency).
_OPEN_SQL = "SELECT count(*) FROM batches WHERE status IN (?, ?) OR visible_at > ?"


class OpenBatchCapReached(Exception):
    """A submission refused because `max_open` batches are not terminal yet."""

    def __init__(self, open_batches: int) -> None:
        super().__init__(f"{open_batches} batches are open")
        self.open_batches = open_batches


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    id: str
    created_at: int
    status: BatchStatus
    total: int
    completed: int
    failed: int
    started_at: float | None
    visible_at: float | None

    def is_visible_terminal(self, now: float) -> bool:
        return self.status.is_terminal and (self.visible_at or 0.0) <= now

    def view(self, now: float) -> Batch:
        """The Batch object a client sees at `now`.

        A batch finished early is shown in_progress until `visible_at`: that is how the
        configured latency is honoured without holding a worker.
        """
        if self.status.is_terminal and not self.is_visible_terminal(now):
            status, counts = BatchStatus.IN_PROGRESS, RequestCounts(total=self.total)
        else:
            status = self.status
            counts = RequestCounts(total=self.total, completed=self.completed, failed=self.failed)
        return Batch(
            id=self.id,
            status=status,
            created_at=self.created_at,
            request_counts=counts,
            output_file_id=f"{self.id}_output" if status.is_terminal else None,
        )


def _row_to_batch(row: tuple) -> StoredBatch:
    seq, batch_id, created_at, status, total, completed, failed, started_at, visible_at = row
    return StoredBatch(
        seq, batch_id, created_at, BatchStatus(status), total, completed, failed,
        started_at, visible_at,
    )  # fmt: skip


def _count_second_times(
    conn: sqlite3.Connection, column: str, counter: str, custom_ids: list[str]
) -> None:
    """After `column` was incremented for `custom_ids`, count those now at exactly 2.

    Kept in the counters table rather than in memory, so the emulator's memory does not grow
    with the number of lines it has seen."""
    for start in range(0, len(custom_ids), 500):
        chunk = custom_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        (second,) = conn.execute(
            f"SELECT count(*) FROM custom_ids WHERE {column} = 2 AND custom_id IN ({marks})",
            chunk,
        ).fetchone()
        if second:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (counter, second),
            )


def _add(conn: sqlite3.Connection, counter: str, by: int) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (counter, by),
    )


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ batches

    def create_batch(
        self,
        batch_id: str,
        created_at: int,
        request: bytes,
        custom_ids: Sequence[str],
        max_open: int | None = None,
        now: float = 0.0,
    ) -> StoredBatch:
        """Store an accepted batch (status validating) and count its custom_ids.

        With `max_open`, raises OpenBatchCapReached (and counts the rejection) when that many
        batches are open at `now`; the check and the insert are one transaction, so
        concurrent submissions cannot overshoot the cap.
        """
        distinct = list(dict.fromkeys(custom_ids))
        refused: int | None = None
        seq: int | None = None
        with self._transaction() as conn:
            if max_open is not None:
                (open_batches,) = conn.execute(_OPEN_SQL, (*_UNFINISHED, now)).fetchone()
                if open_batches >= max_open:
                    refused = open_batches
                    _add(conn, "rejected_open_cap", 1)  # committed: the rejection is counted
            if refused is None:
                seq = self._insert(conn, batch_id, created_at, request, custom_ids, distinct)
        if refused is not None:
            raise OpenBatchCapReached(refused)
        assert seq is not None
        return StoredBatch(
            seq, batch_id, created_at, BatchStatus.VALIDATING, len(custom_ids), 0, 0, None, None
        )

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        batch_id: str,
        created_at: int,
        request: bytes,
        custom_ids: Sequence[str],
        distinct: list[str],
    ) -> int | None:
        cursor = conn.execute(
            "INSERT INTO batches (id, created_at, status, total, request) VALUES (?, ?, ?, ?, ?)",
            (batch_id, created_at, BatchStatus.VALIDATING.value, len(custom_ids), request),
        )
        conn.executemany(
            "INSERT INTO custom_ids (custom_id, batches) VALUES (?, 1)"
            " ON CONFLICT (custom_id) DO UPDATE SET batches = batches + 1",
            ((custom_id,) for custom_id in distinct),
        )
        _count_second_times(conn, "batches", "custom_ids_submitted_twice", distinct)
        return cursor.lastrowid

    def get(self, batch_id: str) -> StoredBatch | None:
        rows = self._query(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,))
        return _row_to_batch(rows[0]) if rows else None

    def request_of(self, batch_id: str) -> bytes | None:
        rows = self._query("SELECT request FROM batches WHERE id = ?", (batch_id,))
        return bytes(rows[0][0]) if rows else None

    def unfinished(self) -> list[str]:
        """Ids of batches not yet terminal, oldest first: the work a restart must resume."""
        rows = self._query(
            "SELECT id FROM batches WHERE status IN (?, ?) ORDER BY seq", _UNFINISHED
        )
        return [row[0] for row in rows]

    def mark_in_progress(self, batch_id: str, started_at: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE batches SET status = ?, started_at = ? WHERE id = ?",
                (BatchStatus.IN_PROGRESS.value, started_at, batch_id),
            )

    def finish(
        self,
        batch_id: str,
        status: BatchStatus,
        completed: int,
        failed: int,
        visible_at: float,
        output: bytes,
        succeeded_ids: Sequence[str],
    ) -> None:
        """Make a batch terminal and store its whole output, in one transaction."""
        distinct = list(dict.fromkeys(succeeded_ids))
        with self._transaction() as conn:
            conn.execute(
                "UPDATE batches SET status = ?, completed = ?, failed = ?, visible_at = ?"
                " WHERE id = ?",
                (status.value, completed, failed, visible_at, batch_id),
            )
            conn.execute(
                "INSERT OR REPLACE INTO outputs (batch_id, body) VALUES (?, ?)", (batch_id, output)
            )
            conn.executemany(
                "UPDATE custom_ids SET succeeded = succeeded + 1 WHERE custom_id = ?",
                ((custom_id,) for custom_id in distinct),
            )
            _count_second_times(conn, "succeeded", "custom_ids_succeeded_twice", distinct)

    def output(self, batch_id: str) -> bytes | None:
        rows = self._query("SELECT body FROM outputs WHERE batch_id = ?", (batch_id,))
        return bytes(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ counters and stats

    def bump(self, name: str, by: int = 1) -> None:
        with self._transaction() as conn:
            _add(conn, name, by)

    def open_batches(self, now: float) -> int:
        """Batches a client would see as not terminal at `now`."""
        (count,) = self._query(_OPEN_SQL, (*_UNFINISHED, now))[0]
        return int(count)

    def custom_id_counts(self) -> dict[str, int]:
        """custom_id -> number of accepted batches it appeared in."""
        return dict(self._query("SELECT custom_id, batches FROM custom_ids"))

    def stats(self, now: float) -> dict[str, int]:
        """Totals over everything this database has seen (they survive a restart).

        lines_processed counts lines that have an output line (success or error) visible to
        clients; lines_failed is the error part of it.
        """
        (row,) = self._query(
            """
            SELECT count(*), coalesce(sum(total), 0),
                coalesce(sum(CASE WHEN done THEN completed + failed ELSE 0 END), 0),
                coalesce(sum(CASE WHEN done THEN failed ELSE 0 END), 0),
                coalesce(sum(CASE WHEN done AND status = 'failed' THEN 1 ELSE 0 END), 0)
            FROM (SELECT *, status IN ('completed', 'failed') AND visible_at <= ? AS done
                  FROM batches)
            """,
            (now,),
        )
        counters = dict(self._query("SELECT name, value FROM counters"))
        twice = counters.get("custom_ids_submitted_twice", 0)
        succeeded_twice = counters.get("custom_ids_succeeded_twice", 0)
        batches, received, processed, failed, batches_failed = row
        return {
            "batches_created": batches,
            "lines_received": received,
            "lines_processed": processed,
            "lines_failed": failed,
            "http_faults_injected": counters.get("http_faults_injected", 0),
            "batches_failed": batches_failed,
            "custom_ids_submitted_twice": twice,
            "custom_ids_succeeded_twice": succeeded_twice,
            "batches_open": self.open_batches(now),
            "rejected_open_cap": counters.get("rejected_open_cap", 0),
            "chat_completions": counters.get("chat_completions", 0),
        }
