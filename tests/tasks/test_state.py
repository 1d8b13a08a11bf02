"""The working state: generations, the ledger's object, and the carry-over index."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.state import PreviousResults, RunState, results_table, state_folder


def test_an_unfinished_generation_is_resumed_and_a_success_starts_a_new_one(tmp_path) -> None:
    destination = str(tmp_path / "out")
    first = RunState(destination).begin("run-1")
    assert (first.generation, first.resumed) == (1, False)
    first.write_ledger(b'{"shards": {}}')

    crashed_rerun = RunState(destination).begin("run-2")
    assert (crashed_rerun.generation, crashed_rerun.resumed) == (1, True)
    assert crashed_rerun.read_ledger() == b'{"shards": {}}'
    crashed_rerun.finish(succeeded=True)

    night = RunState(destination).begin("run-3")
    assert (night.generation, night.resumed, night.last_succeeded) == (2, False, 1)
    assert night.read_ledger() is None
    assert not (Path(state_folder(destination)) / "gen-000001" / "ledger.json").exists()
    night.finish(succeeded=False)
    assert state_folder(destination) == str(tmp_path / "_batch-enrich" / "out")
    assert not (tmp_path / "out").exists()  # the dataset folder holds data only
    status = json.loads((Path(state_folder(destination)) / "generation.json").read_text())
    assert status["status"] == "failed" and status["last_succeeded"] == 1
    assert RunState(destination).begin().generation == 2


def test_previous_results_are_found_by_custom_id(tmp_path) -> None:
    state = RunState(str(tmp_path)).begin()
    ids = [f"summary-{i:032x}" for i in (5, 17, 3**40)]
    rows = [
        {"custom_id": c, "result": f'{{"summary": "{c}"}}', "error": None, "error_code": None,
         "attempts": 1}
        for c in ids
    ]  # fmt: skip
    state.write_group("g1", results_table(rows[:2]))
    state.write_group("g2", results_table(rows[2:]))
    state.finish(succeeded=True)

    following = RunState(str(tmp_path)).begin()
    previous = following.previous_results()
    assert isinstance(previous, PreviousResults) and len(previous) == 3
    found = previous.lookup([ids[2], ids[0], "summary-" + "f" * 32])
    assert set(found) == {ids[0], ids[2]}
    assert found[ids[2]]["result"] == f'{{"summary": "{ids[2]}"}}'
