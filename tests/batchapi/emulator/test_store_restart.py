"""A restarted emulator on the same database keeps its batches and resumes unfinished ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from batchapi.emulator.runner import RunningEmulator
from batchapi.emulator.store import Store
from batchapi.models import (
    Batch,
    BatchStatus,
    ClassifyBody,
    Label,
    OutputLine,
    RequestLine,
    SummarizeBody,
    encode_jsonl,
)

TEXT = (
    "The city council approved the new budget on Tuesday after a long debate. "
    "Mayor Ana Lopez said road repairs and school meals will receive more money next year."
)
Waiter = Callable[..., Batch]


def lines(*custom_ids: str) -> list[RequestLine]:
    labels = [Label(name="politics", rubric="Is it about government?"), Label(name="sport")]
    return [
        RequestLine(custom_id=custom_id, body=SummarizeBody(text=TEXT))
        if number % 2 == 0
        else RequestLine(custom_id=custom_id, body=ClassifyBody(text=TEXT, labels=labels))
        for number, custom_id in enumerate(custom_ids)
    ]


def client_for(emulator: RunningEmulator) -> httpx.Client:
    return httpx.Client(base_url=emulator.base_url, headers={"x-api-key": "test-key"})


def test_batches_and_output_survive_a_restart(
    tmp_path: Path, emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    db = tmp_path / "emulator.sqlite3"
    first = emulator_factory(db_path=db)
    with client_for(first) as client:
        created = client.post("/v1/batches", content=encode_jsonl(lines("a", "b", "c")))
        batch = wait_terminal(client, created.json()["id"])
        output = client.get(f"/v1/batches/{batch.id}/output").content
    stats = first.stats()
    first.stop()

    second = emulator_factory(db_path=db)
    assert second.base_url != "" and db.exists()
    with client_for(second) as client:
        again = client.get(f"/v1/batches/{batch.id}")
        assert again.status_code == 200
        assert Batch.model_validate(again.json()) == batch
        assert client.get(f"/v1/batches/{batch.id}/output").content == output
        assert second.stats() == stats

        # The custom_ids seen before the restart still count.
        resubmitted = client.post("/v1/batches", content=encode_jsonl(lines("c", "d")))
        wait_terminal(client, resubmitted.json()["id"])
    assert second.stats()["custom_ids_submitted_twice"] == 1
    assert second.stats()["batches_created"] == 2


def test_unfinished_batches_are_resumed_after_a_restart(
    tmp_path: Path, emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    # What a crash leaves behind: one batch mid-processing, one never picked up.
    db = tmp_path / "emulator.sqlite3"
    store = Store(db)
    interrupted = lines("i1", "i2", "i3")
    queued = lines("q1", "q2")
    store.create_batch("batch_interrupted", int(time.time()), encode_jsonl(interrupted),
                       [line.custom_id for line in interrupted])  # fmt: skip
    store.mark_in_progress("batch_interrupted", time.time())
    store.create_batch("batch_queued", int(time.time()), encode_jsonl(queued),
                       [line.custom_id for line in queued])  # fmt: skip
    assert store.unfinished() == ["batch_interrupted", "batch_queued"]
    store.close()

    emulator = emulator_factory(db_path=db)
    with client_for(emulator) as client:
        for batch_id, expected in [("batch_interrupted", interrupted), ("batch_queued", queued)]:
            batch = wait_terminal(client, batch_id)
            assert batch.status is BatchStatus.COMPLETED
            assert batch.request_counts.completed == len(expected)
            response = client.get(f"/v1/batches/{batch_id}/output")
            output = [OutputLine.model_validate_json(line) for line in response.text.splitlines()]
            assert [line.custom_id for line in output] == [line.custom_id for line in expected]
            assert all(line.ok for line in output)
    assert emulator.stats()["lines_processed"] == 5


def test_a_batch_in_its_latency_window_finishes_after_a_restart(
    tmp_path: Path, emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    db = tmp_path / "emulator.sqlite3"
    first = emulator_factory(db_path=db, latency=0.5)
    with client_for(first) as client:
        batch_id = client.post("/v1/batches", content=encode_jsonl(lines("a"))).json()["id"]
        assert client.get(f"/v1/batches/{batch_id}").json()["status"] != "completed"
    first.stop()

    second = emulator_factory(db_path=db)
    with client_for(second) as client:
        assert wait_terminal(client, batch_id).status is BatchStatus.COMPLETED
        assert client.get(f"/v1/batches/{batch_id}/output").status_code == 200
