"""The enrich-documents flow end to end: real emulator over HTTP, real Parquet, real Prefect."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tasks.state import state_folder
from tests.flows.conftest import ENRICHMENTS, make_documents


def read_output(destination: str) -> pa.Table:
    return ds.dataset(destination, format="parquet").to_table()


def assert_complete(table: pa.Table, source: pa.Table) -> None:
    """Every source row exactly once, with its own columns unchanged."""
    ids = table.column("id").to_pylist()
    assert Counter(ids) == Counter(source.column("id").to_pylist())
    by_id = {row["id"]: row for row in table.to_pylist()}
    for row in source.to_pylist():
        assert by_id[row["id"]]["text"] == row["text"]
        assert by_id[row["id"]]["score"] == row["score"]


def test_all_three_models_on_local_parquet(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api()
    source = corpus(40)
    destination = str(tmp_path / "out")

    report = run_flow(
        source=source, destination=destination, batch_api=emulator.base_url, group_size=16
    )

    table = read_output(destination)
    assert_complete(table, pq.read_table(source))
    schema = table.schema
    assert schema.field("people").type == pa.list_(
        pa.struct(
            [
                ("text", pa.string()),
                ("type", pa.string()),
                ("confidence", pa.float64()),
                ("start", pa.int64()),
                ("end", pa.int64()),
            ]
        )
    )
    assert schema.field("summary").type == pa.string()
    assert schema.field("topic").type == pa.string()
    assert schema.field("topic_scores").type == pa.map_(pa.string(), pa.float64())
    for name in ("people", "summary", "topic"):
        assert schema.field(f"{name}_error").type == pa.string()
        assert table.column(f"{name}_error").null_count == table.num_rows

    for row in table.to_pylist():
        assert row["people"], "the templates name a person or a company in every document"
        for entity in row["people"]:
            assert row["text"][entity["start"] : entity["end"]] == entity["text"]
            assert 0.0 <= entity["confidence"] <= 1.0
            assert entity["type"] in {"person", "org", "email"}
        assert row["summary"] and len(row["summary"]) <= 60 * 4
        scores = dict(row["topic_scores"])
        assert set(scores) == {"billing", "shipping"}
        assert math.isclose(sum(scores.values()), 1.0, abs_tol=1e-6)
        assert row["topic"] == max(scores, key=scores.get)

    # The template about a parcel is about shipping, the refund one about billing.
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert by_id["doc-00000"]["topic"] == "billing"
    assert by_id["doc-00001"]["topic"] == "shipping"

    metadata = pq.read_schema(Path(destination) / "enriched.parquet").metadata
    assert metadata[b"batch_enrich.backend"].decode() == emulator.base_url
    assert metadata[b"batch_enrich.flow_run_id"]
    assert len(json.loads(metadata[b"batch_enrich.enrichments"])) == 3

    lines = 40 * 3
    stats = emulator.stats()
    assert stats["lines_received"] == lines
    assert stats["batches_created"] == report.batches_submitted
    assert report.batches_submitted >= lines / 50
    assert stats["custom_ids_submitted_twice"] == 0
    assert report.rows_in == report.rows_enriched == 40


def test_shard_size_bounds_batches(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api()
    report = run_flow(
        source=corpus(10),
        destination=str(tmp_path / "out"),
        batch_api=emulator.base_url,
        shard_size=7,
        enrichments=ENRICHMENTS[1:2],
    )
    assert report.batches_submitted == emulator.stats()["batches_created"] == 2


def test_per_line_failures_land_in_error_columns(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api(fail_rate=0.3, seed=11)
    destination = str(tmp_path / "out")
    run_flow(
        source=corpus(30),
        destination=destination,
        batch_api=emulator.base_url,
        max_line_attempts=1,
        max_error_fraction=1.0,  # errors are what this test looks at
    )
    table = read_output(destination)
    assert table.num_rows == 30
    failed = 0
    for name, value_column in (("people", "people"), ("summary", "summary"), ("topic", "topic")):
        errors = table.column(f"{name}_error").to_pylist()
        values = table.column(value_column).to_pylist()
        for error, value in zip(errors, values, strict=True):
            # A row has a value or an error, never both and never neither.
            assert (error is None) != (value is None)
        failed += sum(e is not None for e in errors)
    assert failed == emulator.stats()["lines_failed"] > 0


def test_empty_and_null_text_rows_are_kept_with_an_error(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    table = make_documents(6)
    texts = table.column("text").to_pylist()
    texts[1], texts[4] = "", None
    table = table.set_column(1, "text", pa.array(texts, pa.string()))
    destination = str(tmp_path / "out")
    run_flow(source=corpus(table=table), destination=destination, batch_api=emulator.base_url)
    out = {row["id"]: row for row in read_output(destination).to_pylist()}
    assert len(out) == 6
    for doc_id in ("doc-00001", "doc-00004"):
        for name in ("people", "summary", "topic"):
            assert "text is empty" in out[doc_id][f"{name}_error"]
            assert out[doc_id][name] is None
    assert out["doc-00000"]["summary_error"] is None
    assert emulator.stats()["lines_received"] == 4 * 3


def test_parquet_source_and_destination_on_s3(
    run_flow, api, s3_bucket: str, moto_server: str
) -> None:
    import s3fs

    emulator = api()
    fs = s3fs.S3FileSystem()
    source_table = make_documents(12)
    with fs.open(f"{s3_bucket}/in/part-0.parquet", "wb") as handle:
        pq.write_table(source_table.slice(0, 7), handle)
    with fs.open(f"{s3_bucket}/in/part-1.parquet", "wb") as handle:
        pq.write_table(source_table.slice(7), handle)

    destination = f"s3://{s3_bucket}/enriched"
    run_flow(source=f"s3://{s3_bucket}/in/", destination=destination, batch_api=emulator.base_url)

    table = ds.dataset(f"{s3_bucket}/enriched", format="parquet", filesystem=fs).to_table()
    assert_complete(table, source_table)
    assert table.column("summary").null_count == 0
    assert fs.exists(f"{s3_bucket}/_batch-enrich/enriched/generation.json")
    # The dataset folder holds the output only; the working state is beside it.
    assert fs.ls(f"{s3_bucket}/enriched", detail=False) == [
        f"{s3_bucket}/enriched/enriched.parquet"
    ]


def test_text_objects_on_s3_with_a_non_utf8_object(
    run_flow, api, s3_bucket: str, moto_server: str, tmp_path: Path
) -> None:
    import s3fs

    emulator = api()
    fs = s3fs.S3FileSystem()
    fs.pipe_file(f"{s3_bucket}/notes/a.txt", b"Mr John Smith asked for a refund of $40.")
    fs.pipe_file(f"{s3_bucket}/notes/b.md", "# Parcel\nThe parcel to Zürich is late.".encode())
    fs.pipe_file(f"{s3_bucket}/notes/c.json", json.dumps({"text": "Invoice 7 is wrong."}).encode())
    fs.pipe_file(f"{s3_bucket}/notes/d.txt", b"caf\xe9 latin-1 bytes")
    fs.pipe_file(f"{s3_bucket}/notes/skip.bin", b"\x00\x01")

    destination = str(tmp_path / "out")
    run_flow(
        source=f"s3://{s3_bucket}/notes/", destination=destination, batch_api=emulator.base_url
    )

    out = {row["id"]: row for row in read_output(destination).to_pylist()}
    assert set(out) == {"notes/a.txt", "notes/b.md", "notes/c.json", "notes/d.txt"}
    assert out["notes/c.json"]["text"] == "Invoice 7 is wrong."
    assert "Zürich" in out["notes/b.md"]["text"]
    bad = out["notes/d.txt"]
    assert bad["text"] is None
    for name in ("people", "summary", "topic"):
        assert "not valid UTF-8" in bad[f"{name}_error"]
        assert out["notes/a.txt"][f"{name}_error"] is None
    assert emulator.stats()["lines_received"] == 3 * 3


@pytest.mark.parametrize(
    ("table", "params", "message"),
    [
        (make_documents(3).rename_columns(["doc", "text", "score"]), {}, "has no column 'id'"),
        (
            pa.table({"id": ["a", "b", "a", "c", "c"], "text": ["x"] * 5}),
            {},
            "is not unique",
        ),
        (pa.table({"id": ["a", None, "c"], "text": ["x"] * 3}), {}, "null value"),
        (
            pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
            {},
            "empty",
        ),
        (
            make_documents(3),
            {"enrichments": [{"name": "x", "model": "translate", "text": "t"}]},
            "translate",
        ),
        (
            make_documents(3),
            {"enrichments": [{"name": "topic", "model": "classify", "labels": []}]},
            "labels",
        ),
        (
            make_documents(3),
            {"enrichments": [{"name": "people", "model": "extract", "entities": {}}]},
            "entities",
        ),
        (make_documents(3), {"text_column": "body"}, "columns are ['id', 'text', 'score']"),
    ],
    ids=[
        "missing-id-column",
        "duplicate-ids",
        "null-ids",
        "empty-source",
        "unknown-model",
        "empty-labels",
        "empty-entities",
        "missing-text-column",
    ],
)
def test_bad_input_is_refused_before_any_batch(
    run_flow, corpus, api, tmp_path: Path, table: pa.Table, params: dict, message: str
) -> None:
    emulator = api()
    with pytest.raises(Exception) as caught:
        run_flow(
            source=corpus(table=table),
            destination=str(tmp_path / "out"),
            batch_api=emulator.base_url,
            **params,
        )
    assert message in str(caught.value)
    assert emulator.stats()["batches_created"] == 0
    assert not (tmp_path / "out" / "enriched.parquet").exists()


def test_duplicate_ids_error_shows_offenders(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api()
    table = pa.table({"id": ["a", "b", "a", "c", "c"], "text": ["x"] * 5})
    with pytest.raises(Exception, match=r"'a' x2.*'c' x2|'c' x2.*'a' x2"):
        run_flow(
            source=corpus(table=table), destination=str(tmp_path / "o"), batch_api=emulator.base_url
        )


def test_command_line_entry_point(prefect_api, corpus, api, tmp_path: Path, capsys) -> None:
    from flows.enrich import main

    emulator = api()
    params = {
        "source": corpus(5),
        "destination": str(tmp_path / "out"),
        "enrichments": ENRICHMENTS[2:],
        "batch_api": emulator.base_url,
        "poll_interval_seconds": 0.05,
    }
    job = tmp_path / "job.json"
    job.write_text(json.dumps(params))
    assert main(["--params", str(job)]) == 0
    assert json.loads(capsys.readouterr().out)["rows_in"] == 5
    assert read_output(str(tmp_path / "out")).num_rows == 5


def test_dask_task_runner_spreads_groups_over_processes(
    prefect_api, run_flow, corpus, api, tmp_path: Path, monkeypatch
) -> None:
    # Dask worker processes reach the same Prefect server through the environment.
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    emulator = api()
    source = corpus(24)
    destination = str(tmp_path / "out")
    report = run_flow(
        source=source,
        destination=destination,
        batch_api=emulator.base_url,
        task_runner="dask",
        parallel_groups=2,
        group_size=6,
    )
    assert report.groups == 4
    assert_complete(read_output(destination), pq.read_table(source))
    assert emulator.stats()["lines_received"] == 24 * 3


def test_a_second_run_on_a_busy_destination_stops_before_paying(
    run_flow, corpus, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.lock
    from tasks.lock import DestinationBusyError, DestinationLock

    monkeypatch.setattr(tasks.lock, "STALE_AFTER_SECONDS", 5.0)
    monkeypatch.setattr(tasks.lock, "HEARTBEAT_SECONDS", 0.2)
    emulator = api()
    destination = str(tmp_path / "out")
    # A live run holds the destination (its heartbeat keeps the record fresh).
    with DestinationLock(destination, flow_run_id="the-nightly-run"):
        with pytest.raises(DestinationBusyError, match="the-nightly-run"):
            run_flow(source=corpus(10), destination=destination, batch_api=emulator.base_url)
        assert emulator.stats()["batches_created"] == 0
        assert not (Path(state_folder(destination)) / "generation.json").exists()
    # Once it has finished, the same run goes through.
    report = run_flow(source=corpus(10), destination=destination, batch_api=emulator.base_url)
    assert report.rows_in == 10
    assert not (Path(state_folder(destination)) / "lock.json").exists()
