"""The flow end to end against both revisions of the batch docs (spec §0).

The flow is told nothing about the revision: the client reads either reply shape, and shards
by the block's 50-line limit even where revision A names no limit.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tests.flows.test_resume import kill_a_small_job_and_rerun, output_ids

NAMES = ("people", "summary", "topic")


def enriched(destination: str) -> pa.Table:
    return ds.dataset(destination, format="parquet").to_table().sort_by("id")


def test_revisions_a_and_b_give_identical_output(run_flow, corpus, api, tmp_path: Path) -> None:
    source = corpus(60)
    tables, reports, stats = {}, {}, {}
    for revision in ("A", "B"):
        # A little latency, so the flow polls through queued/processing (validating/in_progress).
        emulator = api(revision=revision, latency=0.3)
        destination = str(tmp_path / f"out-{revision}")
        reports[revision] = run_flow(
            source=source,
            destination=destination,
            batch_api=emulator.base_url,
            group_size=20,
            max_in_flight=2,
        )
        tables[revision] = enriched(destination)
        stats[revision] = emulator.stats()

    assert tables["A"].equals(tables["B"])
    assert tables["A"].num_rows == 60
    for name in NAMES:
        assert tables["A"].column(f"{name}_error").null_count == 60
    assert tables["A"].column("summary").null_count == 0

    for revision in ("A", "B"):
        report = reports[revision]
        assert (report.rows_in, report.rows_enriched) == (60, 60)
        # 60 documents x 3 enrichments in groups of 20: 60 lines a group, 2 shards a group,
        # for revision A too although it would take all 60 in one batch.
        assert report.batches_submitted == stats[revision]["batches_created"] == 6
        assert report.lines_sent == stats[revision]["lines_received"] == 180
        assert {name: (c.ok, c.errors) for name, c in report.enrichments.items()} == {
            name: (60, 0) for name in NAMES
        }
    assert reports["A"].prompt_tokens == reports["B"].prompt_tokens > 0


def test_revision_a_line_failures_reach_the_report(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api(revision="A", fail_rate=0.25, seed=9)
    destination = str(tmp_path / "out")
    report = run_flow(
        source=corpus(40),
        destination=destination,
        batch_api=emulator.base_url,
        max_line_attempts=1,
        max_error_fraction=1.0,
    )
    table = enriched(destination)
    stats = emulator.stats()
    errors = {name: 40 - table.column(f"{name}_error").null_count for name in NAMES}
    assert {name: (c.ok, c.errors) for name, c in report.enrichments.items()} == {
        name: (40 - errors[name], errors[name]) for name in NAMES
    }
    assert sum(errors.values()) == stats["lines_failed"] > 0
    assert report.lines_sent == stats["lines_received"] == 120
    assert report.rows_in == 40


def test_revision_a_sigkill_then_rerun_pays_once(
    prefect_api: str, corpus, api, tmp_path: Path
) -> None:
    emulator = api(revision="A", latency=0.6)
    _, source, destination = kill_a_small_job_and_rerun(prefect_api, emulator, corpus, tmp_path)
    assert output_ids(destination) == Counter(pq.read_table(source).column("id").to_pylist())
    assert emulator.stats()["custom_ids_succeeded_twice"] == 0
