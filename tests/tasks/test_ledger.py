"""The ledger: what a rerun finds, written in few requests."""

from __future__ import annotations

import asyncio
import json

from tasks.ledger import Ledger
from tasks.state import RunState


def test_a_rerun_finds_batch_ids_and_intents_of_live_groups_only(tmp_path) -> None:
    destination = str(tmp_path / "out")
    ledger = Ledger(RunState(destination).begin("run-1"))
    ledger.intend("g0-a", group=0)
    ledger.submitted("g0-b", group=0, batch_id="batch_b")
    ledger.submitted("g1-a", group=1, batch_id="batch_c")
    ledger.intend("g1-b", group=1)
    ledger.discard("g1-b")  # refused by the API before it was queued
    ledger.forget_group(1)  # recorded: never looked up again
    asyncio.run(ledger.sync())

    rerun = Ledger(RunState(destination).begin("run-2"))
    assert {s: (e.group, e.batch_id) for s, e in rerun.found.items()} == {
        "g0-a": (0, None),
        "g0-b": (0, "batch_b"),
    }


def test_concurrent_syncs_share_one_write(tmp_path) -> None:
    state = RunState(str(tmp_path)).begin()
    ledger = Ledger(state)

    async def submit(n: int) -> None:
        ledger.intend(f"shard-{n}", group=0)
        await ledger.sync()

    async def burst() -> None:
        await asyncio.gather(*(submit(n) for n in range(8)))

    asyncio.run(burst())
    assert ledger.writes == 1
    assert len(json.loads(state.read_ledger())["shards"]) == 8
    asyncio.run(ledger.sync())  # nothing changed: nothing written
    assert ledger.writes == 1


def test_a_new_generation_starts_with_an_empty_ledger(tmp_path) -> None:
    state = RunState(str(tmp_path)).begin()
    ledger = Ledger(state)
    ledger.submitted("s", group=0, batch_id="batch_1")
    ledger.sync_blocking()
    state.finish(succeeded=True)
    assert Ledger(RunState(str(tmp_path)).begin()).found == {}
