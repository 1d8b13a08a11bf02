"""The `enrich-documents` flow: source -> shards -> batches -> enriched Parquet dataset.

Run it from a shell with `python -m flows.enrich --params job.json` (the same JSON as a
deployment's parameters), from a deployment, or by calling `enrich_documents(...)`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import ThreadPoolTaskRunner

from batchapi.models import BatchLimits
from blocks.batch_api import BatchApi
from flows.backend import EMBEDDED, Backend, api_block, backend_label, resolve_backend
from flows.estimate import check_budget, estimate_run
from flows.group import PreparedGroup, prepare_group
from flows.report import EnrichmentCounts, EnrichReport, check_error_budget
from flows.runners import check_task_runner, make_task_runner
from tasks.batch import (
    BatchEngine,
    EngineOptions,
    EngineReport,
    GroupOutcome,
    Progress,
    run_batches,
)
from tasks.ledger import Ledger
from tasks.lock import DestinationLock
from tasks.merge import merge_group, output_schema
from tasks.paths import check_paths
from tasks.read import Source, iter_groups, validate_source
from tasks.sinks import OutputFormat, Sink, make_sink
from tasks.spec import (
    Enrichment,
    EnrichmentsParameter,
    OptionalCount,
    OptionalSeconds,
    OptionalText,
    described,
    parse_enrichments,
    spec_hash,
)
from tasks.state import RunState
from tasks.storage import StorageSettings

DEFAULT_TIMEOUT_SECONDS = 6 * 3600
# See README, "Throughput": a remote API takes minutes per batch, so the window must be wide to
# finish a night; it shrinks by itself on 429, so a provider with a lower cap costs little.
DEFAULT_MAX_IN_FLIGHT = 100
DEFAULT_PARALLEL_SUBMISSIONS = 8
# See README, "Error budget": one row in twenty with an error in any enrichment fails the run
# and keeps last night's dataset; empty texts do not count.
DEFAULT_MAX_ERROR_FRACTION = 0.05
# Groups read ahead of the merge: enough queued shards to refill the window at once, bounded so
# memory does not grow with the window.
MAX_LOOKAHEAD_GROUPS = 16
# The embedded emulator's database: kept until the run succeeds, so a rerun can resume.
EMBEDDED_DB = "embedded-emulator.sqlite"


def _count(enriched: pa.Table, enrichments: list[Enrichment], report: EnrichReport) -> None:
    clean = None
    for enrichment in enrichments:
        errors = enriched.column(f"{enrichment.name}_error")
        counts = report.enrichments.setdefault(enrichment.name, EnrichmentCounts())
        counts.errors += len(errors) - errors.null_count
        counts.ok += errors.null_count
        ok = pc.is_null(errors)
        clean = ok if clean is None else pc.and_(clean, ok)
    report.rows_enriched += pc.sum(pc.cast(clean, pa.int64())).as_py() or 0


def _provenance(
    backend: Backend, enrichments: list[Enrichment], state: RunState, mode: str
) -> dict[str, str]:
    return {
        "batch_enrich.backend": backend.label,
        "batch_enrich.flow_run_id": str(flow_run.get_id() or ""),
        "batch_enrich.spec_hash": spec_hash(enrichments),
        "batch_enrich.enrichments": json.dumps([e.model_dump(mode="json") for e in enrichments]),
        "batch_enrich.generation": str(state.generation),
        "batch_enrich.mode": mode,
        "batch_enrich.written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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
    enrichments = parse_enrichments(enrichments)
    settings = _storage_settings(storage_block)
    check_task_runner(task_runner, dask_address, PREFECT_API_URL.value())
    # Before anything is read or paid: overlapping paths would mix output and input rows.
    check_paths(source, destination, output_format, settings)
    reserved = [column for e in enrichments for column in e.columns]
    resolved = validate_source(source, id_column, text_column, reserved, settings, part)
    api = api_block(batch_api)
    limits = BatchLimits(
        max_lines=min(shard_size or api.max_lines_per_batch, api.max_lines_per_batch),
        max_bytes=api.max_bytes_per_batch,
    )
    if dry_run:
        return _dry_run(
            resolved, destination, group_size, enrichments, settings, limits, mode, batch_api, api
        )
    run_id = str(flow_run.get_id() or "")
    # Before the state is touched: a second run on this destination would pay twice.
    with DestinationLock(destination, settings, run_id, logger=logger) as lock:
        state = RunState(destination, settings).peek()
        budget_lines = max_lines_per_run or api.max_lines_per_run
        budget_cost = max_cost_per_run or api.max_cost_per_run
        if budget_lines is not None or budget_cost is not None:
            planned = estimate_run(
                resolved, destination, group_size, enrichments, state, limits, mode,
                api.price_per_million_prompt_tokens,
            )  # fmt: skip
            check_budget(planned, budget_lines, budget_cost, source)
            logger.info(
                "within budget: %d request lines in %d batches (max_lines_per_run %s, "
                "estimated cost %s, max_cost_per_run %s)",
                planned.lines_to_send,
                planned.batches_to_send,
                budget_lines,
                "unknown" if planned.cost() is None else f"{planned.cost():.2f}",
                budget_cost,
            )
        state.begin(run_id)
        logger.info(
            "generation %d (%s) for %d rows from %s",
            state.generation,
            "resumed" if state.resumed else "new",
            resolved.num_rows,
            source,
        )
        embedded_db = state.local_path(EMBEDDED_DB) if batch_api == EMBEDDED else None
        with resolve_backend(batch_api, embedded_db, api) as backend:
            report = EnrichReport(
                source=source,
                destination=destination,
                backend=backend.label,
                mode=mode,
                generation=state.generation,
                resumed=state.resumed,
                rows_in=resolved.num_rows,
                enrichments={e.name: EnrichmentCounts() for e in enrichments},
            )
            engine = BatchEngine(
                Ledger(state),
                backend.api,
                EngineOptions(
                    limits=limits,
                    max_in_flight=max_in_flight,
                    parallel_submissions=parallel_submissions,
                    poll_interval_seconds=poll_interval_seconds or backend.poll_interval_seconds,
                    timeout_seconds=timeout_seconds,
                    deadline=time.time() + timeout_seconds,
                    max_line_attempts=max_line_attempts,
                    models={e.name: e.model for e in enrichments},
                    total_lines=resolved.num_rows * len(enrichments),
                ),
            )
            lookahead = lookahead_groups(
                group_size, len(enrichments), limits.max_lines, max_in_flight, parallel_groups
            )
            progress = create_progress_artifact(
                progress=0.0,
                key="enrich-progress",
                description=f"Lines enriched, out of {engine.options.total_lines}",
            )

            def publish(snapshot: Progress) -> None:
                update_progress_artifact(progress, round(100.0 * snapshot.fraction, 1))

            writer: Sink | None = None
            try:
                with (
                    ThreadPoolTaskRunner(max_workers=1) as driver_runner,
                    make_task_runner(task_runner, parallel_groups, dask_address) as runner,
                ):
                    driver = driver_runner.submit(
                        run_batches, {"engine": engine, "on_progress": publish}
                    )
                    window: deque[tuple[pa.Table, PreparedGroup, Future[GroupOutcome] | None]]
                    window = deque()

                    def merge_next() -> None:
                        nonlocal writer
                        group, prepared, pending = window.popleft()
                        if pending is None:
                            assert prepared.recorded is not None
                            outcome = GroupOutcome(prepared.lines, prepared.recorded)
                        else:
                            outcome = _wait(pending, driver)
                            state.write_group(prepared.lines.key, outcome.results)
                            engine.group_recorded(prepared.lines.index)
                        if writer is None:
                            metadata = _provenance(backend, enrichments, state, mode)
                            sink = make_sink(output_format, destination, state, settings)
                            sink.open(output_schema(group.schema, enrichments, metadata), metadata)
                            writer = sink
                        enriched = merge_group(
                            group, outcome.lines, outcome.results, enrichments, writer.schema
                        )
                        writer.write(enriched)
                        _tally(report, outcome, enriched, enrichments)

                    try:
                        for index, group in enumerate(iter_groups(resolved, group_size)):
                            lock.ensure_held()
                            prepared = runner.submit(
                                prepare_group,
                                {
                                    "group": group,
                                    "index": index,
                                    "enrichments": enrichments,
                                    "source": resolved,
                                    "state": state,
                                    "limits": limits,
                                    "incremental": mode == "incremental",
                                },
                            ).result()
                            if prepared.recorded is not None and not prepared.pending:
                                engine.group_recorded(index)
                                window.append((group, prepared, None))
                            else:
                                pending = engine.add_group(prepared.lines, prepared.pending)
                                window.append((group, prepared, pending))
                            while len(window) >= lookahead:
                                merge_next()
                        engine.close_input()
                        while window:
                            merge_next()
                    except BaseException:
                        engine.stop()  # before the runner waits for the engine's task
                        raise
                    engine_report = driver.result()
                if writer is None:
                    raise RuntimeError("the source yielded no rows")
                check_error_budget(report, max_error_fraction)
                report.output_path = writer.commit()
                update_progress_artifact(progress, 100.0)
            except BaseException:
                engine.stop()
                if writer is not None:
                    writer.abort()
                state.finish(succeeded=False)
                raise
            report.shards_in_doubt = engine_report.in_doubt
            report.rate_limited = engine_report.rate_limited
            report.polls = engine_report.polls
        state.finish(succeeded=True)
        state.remove_local(EMBEDDED_DB)
    report.seconds = round(time.monotonic() - started, 2)
    create_markdown_artifact(
        key="enrich-report", markdown=report.to_markdown(), description="Enrichment run report"
    )
    logger.info(
        "wrote %d rows to %s (%d batches submitted, %d reattached)",
        report.rows_in,
        report.output_path,
        report.batches_submitted,
        report.batches_reattached,
    )
    return report


def lookahead_groups(
    group_size: int, enrichments: int, max_lines: int, max_in_flight: int, parallel_groups: int
) -> int:
    """Groups held between reading and merging: one and a half windows of queued shards."""
    shards_per_group = max(1, math.ceil(group_size * enrichments / max_lines))
    wanted = math.ceil(1.5 * max_in_flight / shards_per_group) + 1
    return max(2, parallel_groups, min(wanted, MAX_LOOKAHEAD_GROUPS))


def _wait(pending: Future[GroupOutcome], driver: PrefectFuture[EngineReport]) -> GroupOutcome:
    """A group's outcome; if the engine's task ends first, its failure."""
    while True:
        try:
            return pending.result(timeout=1.0)
        except FutureTimeout:
            if driver.wrapped_future.done():
                driver.result()  # raises the engine's failure
                if not pending.done():
                    raise RuntimeError("the batch engine stopped with a group unfinished") from None


def _dry_run(
    resolved: Source,
    destination: str,
    group_size: int,
    enrichments: list[Enrichment],
    settings: StorageSettings | None,
    limits: BatchLimits,
    mode: str,
    batch_api: str,
    api: BatchApi,
) -> EnrichReport:
    """Everything a run checks and plans, nothing sent, no lock taken, no state written."""
    state = RunState(destination, settings).peek()
    estimate = estimate_run(
        resolved, destination, group_size, enrichments, state, limits, mode,
        api.price_per_million_prompt_tokens,
    )  # fmt: skip
    markdown = estimate.to_markdown()
    create_markdown_artifact(
        key="enrich-estimate", markdown=markdown, description="What the run would send"
    )
    print(markdown, flush=True)
    return EnrichReport(
        source=resolved.url,
        destination=destination,
        backend=backend_label(batch_api, api),
        mode=mode,
        generation=state.generation,
        resumed=state.resumed,
        rows_in=resolved.num_rows,
        dry_run=True,
        estimate=estimate,
        enrichments={e.name: EnrichmentCounts() for e in enrichments},
    )


def _tally(
    report: EnrichReport, outcome: GroupOutcome, enriched: pa.Table, enrichments: list[Enrichment]
) -> None:
    report.groups += 1
    report.batches_submitted += outcome.batches_submitted
    report.batches_reattached += outcome.batches_reattached
    report.lines_sent += outcome.lines_sent
    report.prompt_tokens += outcome.prompt_tokens
    for name, count in outcome.lines.carried_over.items():
        report.enrichments[name].carried_over += count
    _count(enriched, enrichments, report)
    failed = outcome.results.filter(pc.is_valid(outcome.results["error"]))
    for custom_id, code in zip(
        failed["custom_id"].to_pylist(), failed["error_code"].to_pylist(), strict=True
    ):
        codes = report.enrichments[outcome.lines.enrichment_of(custom_id)].error_codes
        codes[code or "unknown"] = codes.get(code or "unknown", 0) + 1


def _storage_settings(block_name: str | None) -> StorageSettings | None:
    if not block_name:
        return None
    from blocks.storage import S3Storage

    return S3Storage.load(block_name).settings()


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.enrich`: the command line lives in flows/cli.py."""
    from flows.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
