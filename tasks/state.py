"""The run's working state, kept beside the destination: what makes resume possible.

The state of destination `PARENT/NAME` lives in `PARENT/_batch-enrich/NAME/`, outside the
dataset folder, so no reader opened on the destination (pyarrow, Polars, DuckDB, Spark, Delta)
can mistake it for data; `state_folder(destination)` gives it. Its layout:

    generation.json            current generation, its status, the last one that succeeded
    lock.json                  the run holding the destination (tasks.lock), while it runs
    gen-000007/ledger.json     shard -> batch id for groups not yet recorded (tasks.ledger)
    gen-000007/groups/KEY.parquet  every result of a finished group of documents
    gen-000007/staging/        the Parquet output being written, before it is committed

The embedded emulator may keep its database in the folder too (`flows.backend`).

No copy of the documents' text is kept: request lines are rebuilt from the source, and their
custom ids are content-addressed, so the same source and spec give the same shards.

A generation is one logical run. A run that crashed, failed or timed out leaves its generation
"running"; the next run resumes it (same shard ids, so submitted batches are reattached, never
resubmitted). After a success, the next run starts a new generation and, in incremental mode,
carries over results from the last successful one.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage import (
    StorageSettings,
    filesystem,
    join,
    read_bytes,
    read_json,
    remove,
    write_bytes_atomic,
    write_json_atomic,
)

# The folder, beside the destination, that holds the working state of every destination in the
# same parent folder (one subfolder each). Outside the dataset, so readers never see it; its
# leading "_" also makes pyarrow and Spark skip it when the parent folder is read.
STATE_FOLDER = "_batch-enrich"
# Where versions before this layout kept it: inside the destination.
LEGACY_STATE_FOLDER = "_state"


class DestinationPathError(ValueError):
    """The destination cannot be used as given; the message names it and the fix."""


def state_root(root: str) -> str:
    """The state folder of a destination path (without protocol): `PARENT/_batch-enrich/NAME`."""
    stripped = root.rstrip("/")
    parent, _, name = stripped.rpartition("/")
    if not parent and stripped.startswith("/"):
        parent = "/"  # a folder right under the filesystem root
    if not name or not parent:
        raise DestinationPathError(
            f"destination {root!r} is a bucket or filesystem root: give a folder inside it "
            f"(e.g. {stripped or ''}/enriched); the run's working state is kept beside the "
            "destination folder, in its parent"
        )
    return join(parent, STATE_FOLDER, name)


def state_folder(destination: str, settings: StorageSettings | None = None) -> str:
    """Where the working state of `destination` lives, in the destination's own form: a local
    path for a local destination, `s3://bucket/.../_batch-enrich/NAME` on S3."""
    _, root = filesystem(destination, settings)
    folder = state_root(root)
    if "://" in destination and not destination.startswith("file://"):
        return destination.split("://", 1)[0] + "://" + folder
    return folder


RESULT_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("result", pa.string()),  # the domain result as JSON; null on error
        ("error", pa.string()),
        ("error_code", pa.string()),
        ("attempts", pa.int32()),
    ]
)


def key_of(custom_id: str) -> int:
    """The 64-bit key of a custom id, used by the carry-over index (full ids are rechecked)."""
    return int(custom_id[-16:], 16)


def results_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


class PreviousResults:
    """Results of the last successful generation, looked up by custom id in bounded memory.

    Holds only a sorted array of 64-bit keys with (file, row) positions; rows are read from
    the group files on demand, a few files cached at a time.
    """

    def __init__(self, state: RunState, generation: int) -> None:
        self._state = state
        self._files = sorted(
            state.fs.glob(join(state.generation_root(generation), "groups", "*.parquet"))
        )
        keys, files, rows = [], [], []
        for index, path in enumerate(self._files):
            ids = pq.read_table(path, columns=["custom_id"], filesystem=state.fs).column(0)
            keys.append(np.fromiter((key_of(c) for c in ids.to_pylist()), dtype=np.uint64))
            files.append(np.full(len(ids), index, dtype=np.int32))
            rows.append(np.arange(len(ids), dtype=np.int32))
        if keys:
            all_keys = np.concatenate(keys)
            order = np.argsort(all_keys, kind="stable")
            self._keys = all_keys[order]
            self._file = np.concatenate(files)[order]
            self._row = np.concatenate(rows)[order]
        else:
            self._keys = np.empty(0, dtype=np.uint64)
        self._cache: dict[int, pa.Table] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def _table(self, index: int) -> pa.Table:
        if index not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = pq.read_table(self._files[index], filesystem=self._state.fs)
        return self._cache[index]

    def lookup(self, custom_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not len(self._keys) or not custom_ids:
            return {}
        wanted = np.fromiter((key_of(c) for c in custom_ids), dtype=np.uint64)
        positions = np.searchsorted(self._keys, wanted)
        found: dict[str, dict[str, Any]] = {}
        for custom_id, key, position in zip(custom_ids, wanted, positions, strict=True):
            while position < len(self._keys) and self._keys[position] == key:
                row = self._table(int(self._file[position])).slice(int(self._row[position]), 1)
                record = row.to_pylist()[0]
                if record["custom_id"] == custom_id:
                    found[custom_id] = record
                    break
                position += 1
        return found


class RunState:
    """Reads and writes the working state of one destination."""

    def __init__(self, destination: str, settings: StorageSettings | None = None) -> None:
        self.destination = destination
        self.fs, self.root = filesystem(destination, settings)
        self.state_root = state_root(self.root)
        self.generation = 0
        self.resumed = False
        self.last_succeeded: int | None = None
        self._previous: PreviousResults | None = None

    # ------------------------------------------------------------------ generations

    def begin(self, flow_run_id: str | None = None) -> RunState:
        """Resume the unfinished generation, or start a new one after a success."""
        self.peek()
        self._write_generation("running", flow_run_id)
        return self

    def peek(self) -> RunState:
        """What `begin` would resume or start, without writing anything (a dry run)."""
        current = read_json(self.fs, join(self.state_root, "generation.json")) or {}
        self.last_succeeded = current.get("last_succeeded")
        if current.get("status") in ("running", "failed"):
            self.generation, self.resumed = int(current["generation"]), True
        else:
            self.generation = int(current.get("generation", 0)) + 1
        return self

    def finish(self, succeeded: bool, flow_run_id: str | None = None) -> None:
        if succeeded:
            self.last_succeeded = self.generation
            self._write_generation("succeeded", flow_run_id)
            for path in self.fs.glob(join(self.state_root, "gen-*")):
                if not path.rstrip("/").endswith(self._generation_dir(self.generation)):
                    remove(self.fs, path, recursive=True)
            remove(self.fs, join(self.generation_root(), "staging"), recursive=True)
            remove(self.fs, self.ledger_path())
        else:
            self._write_generation("failed", flow_run_id)

    def _write_generation(self, status: str, flow_run_id: str | None) -> None:
        write_json_atomic(
            self.fs,
            join(self.state_root, "generation.json"),
            {
                "generation": self.generation,
                "status": status,
                "last_succeeded": self.last_succeeded,
                "flow_run_id": flow_run_id,
                "updated_at": time.time(),
            },
        )

    @staticmethod
    def _generation_dir(generation: int) -> str:
        return f"gen-{generation:06d}"

    def generation_root(self, generation: int | None = None) -> str:
        return join(self.state_root, self._generation_dir(generation or self.generation))

    def previous_results(self) -> PreviousResults | None:
        """The last successful generation's results (built on first use)."""
        if self.last_succeeded is None or self.last_succeeded == self.generation:
            return None
        if self._previous is None:
            self._previous = PreviousResults(self, self.last_succeeded)
        return self._previous

    # ------------------------------------------------------------------ paths

    def _path(self, folder: str, name: str) -> str:
        return join(self.generation_root(), folder, name)

    def staging_path(self, name: str) -> str:
        return self._path("staging", name)

    # ------------------------------------------------------------------ ledger

    def ledger_path(self) -> str:
        return join(self.generation_root(), "ledger.json")

    def read_ledger(self) -> bytes | None:
        try:
            return read_bytes(self.fs, self.ledger_path())
        except FileNotFoundError:
            return None

    def write_ledger(self, payload: bytes) -> None:
        write_bytes_atomic(self.fs, self.ledger_path(), payload)

    # ------------------------------------------------------------------ results

    def _write_table(self, path: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_bytes_atomic(self.fs, path, sink.getvalue().to_pybytes())

    def _read_table(self, path: str) -> pa.Table | None:
        try:
            return pq.read_table(path, filesystem=self.fs)
        except FileNotFoundError:
            return None

    def write_group(self, group_key: str, table: pa.Table) -> None:
        self._write_table(self._path("groups", f"{group_key}.parquet"), table)

    def read_group(self, group_key: str) -> pa.Table | None:
        return self._read_table(self._path("groups", f"{group_key}.parquet"))


def digest(*parts: str, size: int = 16) -> str:
    return digest_hasher(*parts, size=size).hexdigest()


def digest_hasher(*parts: str, size: int = 16) -> hashlib.blake2b:
    """The hasher of `digest` after `parts`; more parts can be added with `digest_part`
    (for ids that share their first parts, a copy of it saves hashing those again)."""
    hasher = hashlib.blake2b(digest_size=size)
    for part in parts:
        hasher.update(digest_part(part))
    return hasher


def digest_part(part: str) -> bytes:
    """One part of a digest as it is hashed: its UTF-8, then a separator."""
    return part.encode("utf-8", "surrogatepass") + b"\x1f"
