"""Output sinks: Parquet replaced in one step, Delta one version per commit; an abort leaves
the previous output; the destination folder holds nothing but the output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr

from tasks.merge import merge_group, output_schema, results_for
from tasks.sinks import check_destination, make_sink
from tasks.sinks.delta import DeltaSink, delta_storage_options
from tasks.state import DestinationPathError, RunState, results_table
from tasks.storage import StorageSettings, filesystem
from tests.tasks.test_merge import ENRICHMENTS, rows_for, setup

PROVENANCE = {"batch_enrich.mode": "full", "batch_enrich.spec_hash": "abc"}


def enriched(n: int, start: int = 0) -> tuple[pa.Table, pa.Schema]:
    group, lines = setup(n)
    group = group.set_column(0, "id", pa.array([f"d{start + i}" for i in range(n)]))
    merged = results_for(lines, [results_table(rows_for(lines, fail={1}))])
    schema = output_schema(group.schema, ENRICHMENTS, {})
    return merge_group.fn(group, lines, merged, ENRICHMENTS, schema), schema


def write_run(output_format: str, destination: str, parts: list[pa.Table], schema: pa.Schema):
    sink = make_sink(output_format, destination, RunState(destination).begin(), None)
    sink.open(schema, PROVENANCE)
    for part in parts:
        sink.write(part)
    return sink


def commit_info(log_entry: bytes) -> dict:
    return next(
        json.loads(line)["commitInfo"] for line in log_entry.splitlines() if b'"commitInfo"' in line
    )


def test_parquet_is_committed_in_one_step_and_an_abort_leaves_the_old_file(tmp_path) -> None:
    destination = str(tmp_path / "out")
    table, schema = enriched(4)
    sink = write_run("parquet", destination, [table], schema)
    assert not (tmp_path / "out" / "enriched.parquet").exists()
    target = sink.commit()
    assert pq.read_table(target).num_rows == 4
    assert pq.read_schema(target).metadata[b"batch_enrich.mode"] == b"full"
    # The dataset folder holds the output and nothing else.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["enriched.parquet"]

    sink = write_run("parquet", destination, [table, table], schema)
    sink.abort()
    sink.abort()
    assert pq.read_table(target).num_rows == 4


def test_delta_commits_one_version_per_run_and_an_abort_changes_nothing(tmp_path) -> None:
    destination = str(tmp_path / "out")
    first, schema = enriched(5)
    second, _ = enriched(3, start=100)
    assert write_run("delta", destination, [first, second], schema).commit() == destination
    table = DeltaTable(destination)
    assert table.version() == 0
    assert sorted(table.to_pyarrow_table().column("id").to_pylist()) == sorted(
        first.column("id").to_pylist() + second.column("id").to_pylist()
    )
    # The same columns and types as the Parquet output.
    assert table.to_pyarrow_table().schema.equals(schema)

    write_run("delta", destination, [second], schema).commit()
    assert DeltaTable(destination).version() == 1
    assert DeltaTable(destination).to_pyarrow_table().num_rows == 3
    assert DeltaTable(destination, version=0).to_pyarrow_table().num_rows == 8
    history = DeltaTable(destination).history()
    assert history[0]["batch_enrich.spec_hash"] == "abc"
    assert history[0]["batch_enrich.mode"] == "full"

    aborted = write_run("delta", destination, [first, first, first, first], schema)
    aborted.abort()
    assert DeltaTable(destination).version() == 1
    assert DeltaTable(destination).to_pyarrow_table().num_rows == 3


def test_a_delta_write_that_fails_names_the_table(tmp_path) -> None:
    (tmp_path / "file").write_text("not a folder")
    destination = str(tmp_path / "file" / "table")
    table, schema = enriched(2)
    sink = DeltaSink(destination)
    sink.open(schema, PROVENANCE)
    with pytest.raises(RuntimeError, match=r"writing the Delta table .*table failed"):
        sink.write(table)
        sink.commit()


def test_delta_on_s3_through_the_aws_environment(s3_bucket: str) -> None:
    destination = f"s3://{s3_bucket}/enriched"
    table, schema = enriched(6)
    write_run("delta", destination, [table], schema).commit()
    write_run("delta", destination, [table.slice(0, 2)], schema).commit()

    options = delta_storage_options(None, destination)
    assert options["AWS_CONDITIONAL_PUT"] == "etag" and options["AWS_ALLOW_HTTP"] == "true"
    assert DeltaTable(destination, storage_options=options).version() == 1
    old = DeltaTable(destination, version=0, storage_options=options).to_pyarrow_table()
    assert old.num_rows == 6 and old.schema.equals(schema)
    fs, _ = filesystem(destination)
    log = fs.cat_file(f"{s3_bucket}/enriched/_delta_log/00000000000000000001.json")
    assert commit_info(log)["batch_enrich.spec_hash"] == "abc"
    # The working state is beside the table, never in it.
    assert not fs.exists(f"{s3_bucket}/enriched/_state")
    assert fs.exists(f"{s3_bucket}/_batch-enrich/enriched/generation.json")


def test_storage_settings_become_delta_storage_options() -> None:
    settings = StorageSettings(
        endpoint_url="http://127.0.0.1:9000",
        region="eu-central-1",
        access_key_id=SecretStr("AKIDEXAMPLE"),
        secret_access_key=SecretStr("s3cr3t-value"),
    )
    options = delta_storage_options(settings, "s3://bucket/table", environ={})
    assert options == {
        "AWS_CONDITIONAL_PUT": "etag",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    https = StorageSettings(endpoint_url="https://s3.example.com")
    assert "AWS_ALLOW_HTTP" not in delta_storage_options(https, "s3://b/t", environ={})
    assert delta_storage_options(settings, "/local/table") == {}
    sink = DeltaSink("s3://bucket/table", None, settings)
    assert "s3cr3t" not in repr(sink) and "s3cr3t" not in str(vars(sink).get("url"))


@pytest.mark.parametrize(
    ("output_format", "files", "message"),
    [
        ("parquet", ["notes.parquet"], "not this job's output"),
        ("parquet", ["sub/enriched.parquet"], "the dataset of another destination"),
        ("parquet", ["sub/_state/generation.json"], "the dataset of another destination"),
        ("parquet", ["_delta_log/00000000000000000000.json"], "is a Delta table"),
        ("delta", ["enriched.parquet"], "output_format='parquet'"),
        ("delta", ["data.csv"], "is not a Delta table"),
        ("parquet", ["_state/generation.json"], "mv "),
        ("delta", ["_state/generation.json"], "earlier version"),
    ],
)
def test_a_destination_holding_other_files_is_refused(
    tmp_path: Path, output_format: str, files: list[str], message: str
) -> None:
    destination = tmp_path / "out"
    for name in files:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        (destination / name).write_text("{}")
    with pytest.raises(DestinationPathError, match=message) as caught:
        check_destination(output_format, str(destination))
    assert str(destination) in str(caught.value)


def test_an_empty_or_own_destination_is_accepted(tmp_path: Path) -> None:
    check_destination("parquet", str(tmp_path / "new"))
    check_destination("delta", str(tmp_path / "new"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "enriched.parquet").write_bytes(b"x")
    check_destination("parquet", str(tmp_path / "mine"))


def test_a_delta_version_takes_the_columns_of_its_run(tmp_path) -> None:
    """Enrichments change between nights: the new version has tonight's columns only."""
    destination = str(tmp_path / "out")
    table, schema = enriched(3)
    write_run("delta", destination, [table], schema).commit()
    narrower = table.drop_columns(["topic", "topic_scores", "topic_error"])
    write_run("delta", destination, [narrower], narrower.schema).commit()
    assert DeltaTable(destination).to_pyarrow_table().schema.equals(narrower.schema)
    assert "topic" in DeltaTable(destination, version=0).to_pyarrow_table().column_names
