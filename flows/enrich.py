"""The `enrich-documents` flow: source -> shards -> batches -> enriched Parquet dataset.

Run it from a shell with `python -m flows.enrich --params job.json` (the same JSON as a
deployment's parameters), from a deployment, or by calling `enrich_documents(...)`.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_API_URL

from flows import run
from flows.backend import resolve_backend
from flows.report import EnrichReport
from flows.run import validate_job
from flows.runners import check_task_runner, make_task_runner
from tasks.sinks import OutputFormat
from tasks.spec import (
    EnrichmentsParameter,
    OptionalCount,
    OptionalSeconds,
    OptionalText,
    described,
)

DEFAULT_TIMEOUT_SECONDS = 6 * 3600
# See README, "Throughput": a remote API takes minutes per batch, so the window must be wide to
# finish a night; it shrinks by itself on 429, so a provider with a lower cap costs little.
DEFAULT_MAX_IN_FLIGHT = 100
DEFAULT_PARALLEL_SUBMISSIONS = 8
# See README, "Error budget": one row in twenty with an error in any enrichment fails the run
# and keeps last night's dataset; empty texts do not count.
DEFAULT_MAX_ERROR_FRACTION = 0.05


@flow(name="enrich-documents", log_prints=False)
def enrich_documents(
    source: Annotated[
        str,
        described(
            "Parquet file, folder or glob (local or s3://), or an "
            "s3://bucket/prefix/ of .txt/.md/.json objects."
        ),
    ],
    destination: Annotated[
        str, described("Folder (local or s3://) that receives the enriched dataset.")
    ],
    enrichments: EnrichmentsParameter,
    id_column: Annotated[str, described("Source column holding each document's unique id.")] = "id",
    text_column: Annotated[str, described("Source column holding each document's text.")] = "text",
    batch_api: Annotated[
        str,
        described(
            "'embedded' (local heuristic emulator), a BatchApi block name, or an "
            "http(s):// base URL with the key in BATCH_API_KEY."
        ),
    ] = "embedded",
    shard_size: Annotated[
        OptionalCount, described("Lines per batch; 0 or empty: the block's limit (50).")
    ] = None,
    max_in_flight: Annotated[
        int,
        described(
            ge=1,
            description="Batches open at the provider at once, for the whole run; the window "
            "shrinks on 429 and grows back.",
        ),
    ] = DEFAULT_MAX_IN_FLIGHT,
    parallel_submissions: Annotated[
        int,
        described(
            ge=1,
            le=64,
            description="Batch submissions on the wire at once; a crash can leave at most "
            "this many batches in doubt (the rerun names them).",
        ),
    ] = DEFAULT_PARALLEL_SUBMISSIONS,
    poll_interval_seconds: Annotated[
        OptionalSeconds, described("Wait between polls; 0 or empty: the block's (5 s).")
    ] = None,
    timeout_seconds: Annotated[
        float, described(gt=0, description="Give up waiting after this long; rerun to resume.")
    ] = DEFAULT_TIMEOUT_SECONDS,
    mode: Annotated[
        Literal["full", "incremental"],
        described("incremental: reuse results of unchanged documents."),
    ] = "full",
    dry_run: Annotated[
        bool,
        described(
            "Send nothing: report per enrichment the lines and batches a run would send, "
            "the lines carried over, and the estimated prompt tokens and cost."
        ),
    ] = False,
    max_lines_per_run: Annotated[
        OptionalCount,
        described(
            "Budget: stop before the first batch if the run would send more request lines. "
            "0 or empty: the BatchApi block's setting (none by default)."
        ),
    ] = None,
    max_cost_per_run: Annotated[
        OptionalSeconds,
        described(
            "Budget: stop before the first batch if the estimated cost is higher (needs the "
            "block's price). 0 or empty: the block's setting (none by default)."
        ),
    ] = None,
    max_error_fraction: Annotated[
        float,
        described(
            ge=0,
            le=1,
            description="Fail without replacing the previous output when more than this "
            "share of rows end with an error in any enrichment (empty texts aside).",
        ),
    ] = DEFAULT_MAX_ERROR_FRACTION,
    max_line_attempts: Annotated[
        int, described(ge=1, le=10, description="Sends per line before its error is kept.")
    ] = 3,
    group_size: Annotated[
        int, described(ge=1, description="Documents read, sent and merged together.")
    ] = 2000,
    parallel_groups: Annotated[
        int, described(ge=1, le=64, description="Groups prepared and merged side by side.")
    ] = 2,
    task_runner: Annotated[
        Literal["thread", "dask"],
        described(
            "thread: in this process; dask: a Dask cluster's processes (dask_address, "
            "else a local cluster)."
        ),
    ] = "thread",
    dask_address: Annotated[
        OptionalText,
        described(
            "With task_runner 'dask': a running Dask scheduler (tcp://host:8786) whose workers "
            "prepare the groups; empty: a local cluster started for the run."
        ),
    ] = None,
    storage_block: Annotated[
        OptionalText,
        described("S3Storage block for s3:// paths; empty: the AWS environment variables."),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        described(
            "parquet: destination/enriched.parquet, replaced by each run; delta: a Delta Lake "
            "table at destination, one version per run."
        ),
    ] = "parquet",
    part: Annotated[
        OptionalText,
        described(
            "Enrich only part K of N of the source ('K/N'): its files when it has N or more, "
            "else the rows whose id hashes to K. Empty: all of it."
        ),
    ] = None,
) -> EnrichReport:
    logger = get_run_logger()
    started = time.monotonic()
    check_task_runner(task_runner, dask_address, PREFECT_API_URL.value())
    job = validate_job(
        source, destination, enrichments, id_column, text_column, batch_api, shard_size, mode,
        group_size, storage_block, output_format, part,
    )  # fmt: skip
    if dry_run:
        return run.dry_run(job)
    options = run.RunOptions(
        max_in_flight=max_in_flight,
        parallel_submissions=parallel_submissions,
        poll_interval_seconds=poll_interval_seconds,
        timeout_seconds=timeout_seconds,
        max_line_attempts=max_line_attempts,
        parallel_groups=parallel_groups,
        max_error_fraction=max_error_fraction,
    )
    with run.lock_destination(job, logger) as lock:
        run.check_run_budget(job, run.peek_state(job), max_lines_per_run, max_cost_per_run, logger)
        with (
            run.open_state(job, logger) as state,
            resolve_backend(batch_api, destination, job.settings, job.api) as backend,
        ):
            runner = make_task_runner(task_runner, parallel_groups, dask_address)
            report = run.run_groups(job, state, backend, lock, options, runner)
    return run.publish_report(report, started, logger)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.enrich`: the command line lives in flows/cli.py."""
    from flows.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
