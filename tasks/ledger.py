"""The batch ledger: which shard became which batch, in one small object per generation.

The API has no idempotency key and no batch listing, so the only thing that keeps a rerun from
paying twice is our own record of the batch ids it was given. Everything else is derived:
request lines are rebuilt from the source (custom ids are content-addressed), output is
fetched again from the API, and a group's decoded results are written once, per group.

So the ledger holds only the live entries, one per shard of a group whose results are not yet
recorded: `{"shard_id": {"group": 3, "batch_id": "batch_..." | null}}`. A `null` batch id is
an *intent*: the shard was about to be sent, or was on the wire, when the ledger was written.
Each `sync` rewrites the whole object in one request (a PUT on S3, a rename locally), and
concurrent callers share a write (group commit): submissions start in bursts as batches finish,
so a night costs about one request per batch, or less, for its intents and ids together.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson

from tasks.state import RunState


@dataclass
class LedgerEntry:
    group: int
    batch_id: str | None = None


class Ledger:
    """In memory the truth; on storage what a rerun will find after `sync` returns."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        raw = state.read_ledger() if state.resumed else None
        entries = orjson.loads(raw)["shards"] if raw else {}
        self._entries: dict[str, LedgerEntry] = {
            shard_id: LedgerEntry(entry["group"], entry.get("batch_id"))
            for shard_id, entry in entries.items()
        }
        # What an earlier run left: batches to reattach to, and intents (shards in doubt).
        self.found: dict[str, LedgerEntry] = dict(self._entries)
        self._version = 0
        self._durable = 0
        self._lock: asyncio.Lock | None = None
        self.writes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, shard_id: str) -> LedgerEntry | None:
        return self._entries.get(shard_id)

    def intend(self, shard_id: str, group: int) -> None:
        self._entries[shard_id] = LedgerEntry(group)
        self._version += 1

    def submitted(self, shard_id: str, group: int, batch_id: str) -> None:
        self._entries[shard_id] = LedgerEntry(group, batch_id)
        self._version += 1

    def discard(self, shard_id: str) -> None:
        """The shard was not sent after all (the API refused it before queuing), or its batch
        is gone (the API no longer knows it): nothing of it is owed."""
        if self._entries.pop(shard_id, None) is not None:
            self._version += 1

    def forget_group(self, group: int) -> None:
        """The group's results are recorded: its batches will never be looked up again."""
        stale = [s for s, entry in self._entries.items() if entry.group == group]
        for shard_id in stale:
            del self._entries[shard_id]
        if stale:
            self._version += 1

    @property
    def dirty(self) -> bool:
        return self._durable < self._version

    async def sync(self) -> None:
        """Return once every change made before the call is on storage."""
        # Let the other submissions of this moment record theirs first: one write for all.
        await asyncio.sleep(0)
        target = self._version
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._durable >= target:
                return  # a write that started after our change carried it
            version = self._version
            payload = self.encode()
            await asyncio.to_thread(self._state.write_ledger, payload)
            self.writes += 1
            self._durable = max(self._durable, version)

    def sync_blocking(self) -> None:
        """For exits outside the event loop (a timeout, a failure): best to leave it current."""
        if self.dirty:
            version = self._version
            self._state.write_ledger(self.encode())
            self.writes += 1
            self._durable = version

    def encode(self) -> bytes:
        shards = {
            shard_id: {"group": entry.group, "batch_id": entry.batch_id}
            for shard_id, entry in self._entries.items()
        }
        return orjson.dumps({"written_at": time.time(), "shards": shards})
