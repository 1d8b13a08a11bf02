"""Safe before paying: the dry run's estimate, the budget guard, and the error budget."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from flows.estimate import BudgetExceededError
from flows.report import ErrorBudgetExceededError
from tests.flows.conftest import FLOW_TEST_KEY, make_documents


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_a_dry_run_sends_nothing_and_its_estimate_is_what_a_run_sends(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    table = make_documents(40)
    texts = table.column("text").to_pylist()
    texts[5] = ""  # not sent: its rows get an error instead
    source = corpus(table=table.set_column(1, "text", pa.array(texts)))
    destination = str(tmp_path / "out")
    before = files_under(tmp_path)

    dry = run_flow(
        source=source,
        destination=destination,
        batch_api=emulator.base_url,
        shard_size=10,
        dry_run=True,
    )
    assert emulator.stats()["batches_created"] == 0
    assert files_under(tmp_path) == before  # no lock, no state, no output
    estimate = dry.estimate
    assert dry.dry_run and estimate is not None
    assert estimate.lines_to_send == 39 * 3
    assert {n: e.not_sent for n, e in estimate.enrichments.items()} == dict.fromkeys(
        ("people", "summary", "topic"), 1
    )
    assert estimate.prompt_tokens > 0 and estimate.cost() is None  # no price on a URL

    real = run_flow(
        source=source, destination=destination, batch_api=emulator.base_url, shard_size=10
    )
    assert real.lines_sent == estimate.lines_to_send
    assert real.batches_submitted == estimate.batches_to_send
    assert real.prompt_tokens == estimate.prompt_tokens  # the emulator bills the same estimate

    # An incremental night: the dry run knows what would be carried over.
    changed = table.set_column(
        1, "text", pa.array([t + " Updated." for t in texts[:2]] + texts[2:])
    )
    source = corpus(table=changed)
    night = run_flow(
        source=source,
        destination=destination,
        batch_api=emulator.base_url,
        mode="incremental",
        dry_run=True,
    ).estimate
    assert night is not None
    assert night.lines_to_send == 2 * 3
    assert {n: e.carried_over for n, e in night.enrichments.items()} == dict.fromkeys(
        ("people", "summary", "topic"), 37
    )
    created = emulator.stats()["batches_created"]
    after = run_flow(
        source=source, destination=destination, batch_api=emulator.base_url, mode="incremental"
    )
    assert after.lines_sent == night.lines_to_send
    assert emulator.stats()["batches_created"] - created == night.batches_to_send


def test_prices_on_the_block_give_a_cost_and_a_cost_budget(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    from blocks.batch_api import BatchApi

    emulator = api()
    BatchApi(
        base_url=emulator.base_url,
        api_key=FLOW_TEST_KEY,
        price_per_million_prompt_tokens=2.5,
        max_cost_per_run=0.0001,
    ).save("priced-api", overwrite=True)
    source = corpus(20)
    destination = str(tmp_path / "out")
    dry = run_flow(source=source, destination=destination, batch_api="priced-api", dry_run=True)
    estimate = dry.estimate
    assert estimate is not None
    assert estimate.cost() == pytest.approx(estimate.prompt_tokens * 2.5 / 1e6)
    assert "est. cost" in estimate.to_markdown()

    with pytest.raises(BudgetExceededError) as caught:
        run_flow(source=source, destination=destination, batch_api="priced-api")
    assert "max_cost_per_run 0.0001" in str(caught.value)
    assert emulator.stats()["batches_created"] == 0
    # A run's own budget wins over the block's.
    report = run_flow(
        source=source, destination=destination, batch_api="priced-api", max_cost_per_run=1.0
    )
    assert report.batches_submitted > 0


def test_the_line_budget_stops_a_run_before_its_first_batch(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    with pytest.raises(BudgetExceededError) as caught:
        run_flow(
            source=corpus(20),
            destination=str(tmp_path / "out"),
            batch_api=emulator.base_url,
            max_lines_per_run=50,
        )
    message = str(caught.value)
    assert "60 request lines" in message and "max_lines_per_run 50" in message
    assert "nothing was sent" in message
    assert emulator.stats()["batches_created"] == 0


def test_too_many_errors_keep_last_nights_output_and_a_rerun_sends_only_the_failed_lines(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    healthy = api()
    destination = str(tmp_path / "out")
    run_flow(source=corpus(20), destination=destination, batch_api=healthy.base_url)
    last_night = ds.dataset(destination, format="parquet").to_table()

    source = corpus(table=make_documents(30))
    failing = api(fail_rate=0.5, seed=4)
    with pytest.raises(ErrorBudgetExceededError) as caught:
        run_flow(
            source=source,
            destination=destination,
            batch_api=failing.base_url,
            max_line_attempts=1,
        )
    message = str(caught.value)
    assert "max_error_fraction 0.05" in message and "server_error" in message
    assert ds.dataset(destination, format="parquet").to_table().equals(last_night)
    failed_lines = failing.stats()["lines_failed"]

    # The cause is fixed: the rerun resumes, sends only the lines that failed, and commits.
    report = run_flow(source=source, destination=destination, batch_api=healthy.base_url)
    assert report.resumed
    assert report.lines_sent == failed_lines
    table = ds.dataset(destination, format="parquet").to_table()
    assert table.num_rows == 30
    assert all(table.column(f"{n}_error").null_count == 30 for n in ("people", "summary", "topic"))
