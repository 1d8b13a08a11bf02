"""Both output formats through the flow: the same rows, read by pyarrow, Polars and DuckDB
exactly once each; Delta versions per run; nothing visible from a failed run; S3; overlaps."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from flows.report import ErrorBudgetExceededError
from tasks.paths import PathOverlapError
from tasks.sinks.delta import delta_storage_options
from tasks.state import state_folder
from tests.flows.conftest import make_documents

PROVENANCE_KEYS = {
    "batch_enrich.backend",
    "batch_enrich.flow_run_id",
    "batch_enrich.spec_hash",
    "batch_enrich.enrichments",
    "batch_enrich.generation",
    "batch_enrich.mode",
    "batch_enrich.written_at",
}


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def parquet_readers(destination: str) -> dict[str, pa.Table]:
    """What the README tells users to run on a Parquet destination."""
    return {
        "pyarrow": ds.dataset(destination).to_table(),
        "polars": pl.scan_parquet(destination).collect().to_arrow(),
        "duckdb": duckdb.sql(
            f"select * from read_parquet('{destination}/*.parquet')"
        ).to_arrow_table(),
        # The glob a new user tries first: every Parquet file below the folder.
        "duckdb-recursive": duckdb.sql(
            f"select * from read_parquet('{destination}/**/*.parquet')"
        ).to_arrow_table(),
    }


def delta_readers(destination: str) -> dict[str, pa.Table]:
    """What the README tells users to run on a Delta destination."""
    dataset = DeltaTable(destination).to_pyarrow_dataset()
    return {
        "deltalake": DeltaTable(destination).to_pyarrow_table(),
        "pyarrow": dataset.to_table(),
        "polars": pl.scan_delta(destination).collect().to_arrow(),
        "duckdb": duckdb.sql("select * from dataset").to_arrow_table(),
    }


def assert_each_row_once(readers: dict[str, pa.Table], ids: list[str]) -> None:
    for reader, table in readers.items():
        assert sorted(table.column("id").to_pylist()) == sorted(ids), reader


def test_both_formats_give_the_same_rows_and_every_reader_sees_each_once(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    source = corpus(24)
    ids = pq.read_table(source).column("id").to_pylist()
    parquet_out, delta_out = str(tmp_path / "enriched"), str(tmp_path / "enriched-delta")
    for destination, output_format in ((parquet_out, "parquet"), (delta_out, "delta")):
        report = run_flow(
            source=source,
            destination=destination,
            batch_api=emulator.base_url,
            group_size=10,
            output_format=output_format,
        )
        assert report.rows_in == 24 and report.output_path

    parquet_rows = pq.read_table(Path(parquet_out) / "enriched.parquet")
    delta_rows = DeltaTable(delta_out).to_pyarrow_table()
    assert delta_rows.schema.equals(parquet_rows.schema, check_metadata=False)
    assert by_id(delta_rows).equals(by_id(parquet_rows.replace_schema_metadata()))
    assert parquet_rows.column("summary").null_count == 0

    assert_each_row_once(parquet_readers(parquet_out), ids)
    assert_each_row_once(delta_readers(delta_out), ids)
    # The working state lives beside the datasets, in the parent folder, never inside them.
    assert sorted(p.name for p in Path(parquet_out).iterdir()) == ["enriched.parquet"]
    assert not any(p.suffix == ".json" for p in Path(delta_out).iterdir())
    for destination in (parquet_out, delta_out):
        assert Path(state_folder(destination)).parent == tmp_path / "_batch-enrich"
        assert (Path(state_folder(destination)) / "generation.json").exists()

    # The provenance: Parquet key-value metadata, the Delta commit's metadata; same keys.
    parquet_meta = {k.decode(): v.decode() for k, v in parquet_rows.schema.metadata.items()}
    commit = DeltaTable(delta_out).history()[0]
    assert set(parquet_meta) >= PROVENANCE_KEYS and set(commit) >= PROVENANCE_KEYS
    assert commit["batch_enrich.spec_hash"] == parquet_meta["batch_enrich.spec_hash"]


def test_each_delta_run_is_a_version_and_incremental_nights_hold_every_row(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    destination = str(tmp_path / "enriched")
    first = run_flow(
        source=corpus(12),
        destination=destination,
        batch_api=emulator.base_url,
        output_format="delta",
    )
    assert first.rows_in == 12
    night = run_flow(
        source=corpus(table=pa.concat_tables([make_documents(12), make_documents(5, start=12)])),
        destination=destination,
        batch_api=emulator.base_url,
        output_format="delta",
        mode="incremental",
    )
    assert night.enrichments["summary"].carried_over == 12
    table = DeltaTable(destination)
    assert table.version() == 1
    assert table.to_pyarrow_table().num_rows == 17
    assert table.to_pyarrow_table().column("summary").null_count == 0
    assert DeltaTable(destination, version=0).to_pyarrow_table().num_rows == 12
    assert table.history()[0]["batch_enrich.mode"] == "incremental"


def test_a_failed_delta_run_leaves_the_version_and_a_rerun_resumes(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    destination = str(tmp_path / "enriched")
    source = corpus(10)
    healthy = api()
    run_flow(
        source=source, destination=destination, batch_api=healthy.base_url, output_format="delta"
    )
    before = by_id(DeltaTable(destination).to_pyarrow_table())

    failing = api(fail_rate=1.0)
    with pytest.raises(ErrorBudgetExceededError):
        run_flow(
            source=source,
            destination=destination,
            batch_api=failing.base_url,
            output_format="delta",
            max_line_attempts=1,
        )
    assert failing.stats()["lines_received"] > 0  # it did write rows before failing
    assert DeltaTable(destination).version() == 0
    assert by_id(DeltaTable(destination).to_pyarrow_table()).equals(before)

    rerun = run_flow(
        source=source, destination=destination, batch_api=healthy.base_url, output_format="delta"
    )
    assert rerun.resumed
    assert DeltaTable(destination).version() == 1
    assert DeltaTable(destination).to_pyarrow_table().column("summary_error").null_count == 10


def test_delta_output_on_s3(run_flow, api, s3_bucket: str) -> None:
    import pyarrow.fs as pafs

    emulator = api()
    documents = make_documents(15)
    pq.write_table(
        documents, f"{s3_bucket}/in/docs.parquet", filesystem=pafs.S3FileSystem(
            endpoint_override=delta_storage_options(None, "s3://x")["AWS_ENDPOINT_URL"],
            scheme="http",
        )
    )  # fmt: skip
    destination = f"s3://{s3_bucket}/enriched"
    for _ in range(2):
        run_flow(
            source=f"s3://{s3_bucket}/in/",
            destination=destination,
            batch_api=emulator.base_url,
            output_format="delta",
        )
    options = delta_storage_options(None, destination)
    table = DeltaTable(destination, storage_options=options)
    assert table.version() == 1
    assert sorted(table.to_pyarrow_table().column("id").to_pylist()) == sorted(
        documents.column("id").to_pylist()
    )
    old = DeltaTable(destination, version=0, storage_options=options).to_pyarrow_table()
    assert old.num_rows == 15


@pytest.mark.parametrize("output_format", ["parquet", "delta"])
def test_overlapping_paths_are_refused_before_anything_is_paid(
    run_flow, corpus, api, tmp_path: Path, output_format: str
) -> None:
    emulator = api()
    source = corpus(5)
    inside = str(Path(source).parent / "enriched")
    with pytest.raises(PathOverlapError) as caught:
        run_flow(
            source=str(Path(source).parent),
            destination=inside,
            batch_api=emulator.base_url,
            output_format=output_format,
        )
    assert inside in str(caught.value) and str(Path(source).parent) in str(caught.value)
    assert emulator.stats()["batches_created"] == 0
    assert not Path(inside).exists()


def test_a_delta_run_killed_mid_run_commits_nothing_and_its_rerun_pays_once(
    prefect_api: str, corpus, api, tmp_path: Path
) -> None:
    from collections import Counter

    from tests.flows.test_resume import kill_a_small_job_and_rerun

    emulator = api(latency=0.6)
    _, source, destination = kill_a_small_job_and_rerun(
        prefect_api, emulator, corpus, tmp_path, output_format="delta"
    )
    table = DeltaTable(destination)
    assert table.version() == 0  # the killed run committed nothing
    ids = table.to_pyarrow_table().column("id").to_pylist()
    assert Counter(ids) == Counter(pq.read_table(source).column("id").to_pylist())
