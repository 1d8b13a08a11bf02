"""The parts of `enrich-partitioned` that need no work pool: publishing refuses parts that do
not hold every row once, a published night is recognised, and a child run is taken for dead
only on evidence."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from prefect.client.schemas.objects import FlowRun
from prefect.states import Running

from flows import partitioned
from flows.partitioned import (
    NIGHT_KEY,
    PartRun,
    PartsFailedError,
    _dead_reason,
    _finished_unreported,
    _publish,
    _published_night,
)
from tasks.lock import DestinationLock
from tasks.parts import Part
from tasks.state import RunState, state_folder
from tests.flows.conftest import make_documents


def _parts(tmp_path: Path, tables: list[pa.Table]) -> list[PartRun]:
    runs = []
    for index, table in enumerate(tables, start=1):
        item = PartRun(Part(index, len(tables)), table.num_rows, str(tmp_path / f"part-{index}"))
        Path(item.destination).mkdir()
        pq.write_table(table, item.output)
        runs.append(item)
    return runs


@pytest.mark.parametrize("output_format", ["delta", "parquet"])
def test_parts_missing_a_row_are_not_published(tmp_path: Path, output_format: str) -> None:
    documents = make_documents(30)
    runs = _parts(tmp_path, [documents.slice(0, 15), documents.slice(16)])  # row 15 is lost
    destination = str(tmp_path / "enriched")
    state = RunState(destination).begin("parent")
    with pytest.raises(PartsFailedError, match="29 rows"):
        _publish(runs, 30, "id", documents.schema, {}, output_format, destination, state, None)
    assert not Path(destination, "_delta_log").exists()
    assert not Path(destination, "enriched.parquet").exists()


@pytest.mark.parametrize("output_format", ["delta", "parquet"])
def test_all_parts_are_one_commit_that_names_its_night(tmp_path: Path, output_format: str) -> None:
    documents = make_documents(30)
    runs = _parts(tmp_path, [documents.slice(0, 10), documents.slice(10)])
    destination = str(tmp_path / "enriched")
    state = RunState(destination).begin("parent")
    assert _published_night(output_format, destination, None) is None
    _, rows = _publish(
        runs, 30, "id", documents.schema, {NIGHT_KEY: "night-1"}, output_format, destination,
        state, None,
    )  # fmt: skip
    assert rows == 30
    assert _published_night(output_format, destination, None) == "night-1"
    if output_format == "delta":
        table = DeltaTable(destination)
        assert table.version() == 0
        assert table.to_pyarrow_table().sort_by("id").equals(documents.sort_by("id"))


def _child(destination: str, age: float = 0.0) -> tuple[PartRun, FlowRun]:
    run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), state=Running())
    run.state.timestamp = run.state.timestamp.subtract(seconds=age)
    return PartRun(Part(1, 2), 10, destination), run


def test_a_child_is_dead_when_its_lock_names_a_process_that_is_gone(tmp_path: Path) -> None:
    item, run = _child(str(tmp_path / "part-1"))
    with DestinationLock(item.destination, flow_run_id=str(run.id)):
        assert _dead_reason(item, run, None) is None  # this process holds it: alive
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock = Path(state_folder(item.destination)) / "lock.json"
    record = {
        "token": "t", "flow_run_id": str(run.id), "host": socket.gethostname(),
        "pid": int(gone.stdout), "acquired_at": time.time(), "heartbeat_at": time.time(),
    }  # fmt: skip
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps(record))
    assert "gone" in (_dead_reason(item, run, None) or "")


def test_a_child_without_a_lock_is_dead_only_after_a_long_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partitioned, "SILENT_CHILD_SECONDS", 60.0)
    item, starting = _child(str(tmp_path / "part-1"), age=5)
    assert _dead_reason(item, starting, None) is None
    item, silent = _child(str(tmp_path / "part-1"), age=120)
    assert "no lock" in (_dead_reason(item, silent, None) or "")


def test_a_child_that_wrote_its_part_and_died_reporting_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item, run = _child(str(tmp_path / "part-1"))
    assert not _finished_unreported(item, run, None)
    Path(item.destination).mkdir()
    table = make_documents(3)
    pq.write_table(
        table.replace_schema_metadata({"batch_enrich.flow_run_id": str(run.id)}), item.output
    )
    state = RunState(item.destination).begin(str(run.id))
    assert not _finished_unreported(item, run, None)  # written, not yet recorded
    state.finish(succeeded=True)
    # Recorded a moment ago: it is still reporting Completed, give it time.
    assert not _finished_unreported(item, run, None)
    monkeypatch.setattr(partitioned, "REPORTING_GRACE_SECONDS", -1.0)
    assert _finished_unreported(item, run, None)
