"""The steps `enrich-documents` composes: a checked job, its budget, its groups and its report.

`enrich_documents` (flows/enrich.py) reads as: validate the job, take the destination's lock,
open the run state, run the groups through the batch engine into a sink, publish the report.
The wiring of each step lives here.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from batchapi.models import BatchLimits
from blocks.batch_api import BatchApi
from flows.backend import Backend, api_block, backend_label
from flows.estimate import check_budget, estimate_run
from flows.group import PreparedGroup, prepare_group
from flows.report import EnrichmentCounts, EnrichReport, check_error_budget
from tasks.batch import BatchEngine, EngineOptions, EngineReport, GroupOutcome, run_batches
from tasks.ledger import Ledger
from tasks.lock import DestinationLock
from tasks.merge import merge_group, output_schema
from tasks.paths import check_paths
from tasks.read import Source, iter_groups, validate_source
from tasks.sinks import Sink, make_sink
from tasks.spec import Enrichment, parse_enrichments, spec_hash
from tasks.state import RunState
from tasks.storage import StorageSettings

# Groups read ahead of the merge: enough queued shards to refill the window at once, bounded so
# memory does not grow with the window.
MAX_LOOKAHEAD_GROUPS = 16


@dataclass(frozen=True)
class Job:
    """A run's parameters, checked: what is read, what is asked of which API, where it goes."""

    source: Source
    destination: str
    enrichments: list[Enrichment]
    settings: StorageSettings | None
    batch_api: str
    api: BatchApi
    limits: BatchLimits
    mode: str
    output_format: str
    group_size: int

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"


def validate_job(
    source: str,
    destination: str,
    enrichments: object,
    id_column: str,
    text_column: str,
    batch_api: str,
    shard_size: int | None,
    mode: str,
    group_size: int,
    storage_block: str | None,
    output_format: str,
    part: str | None = None,
) -> Job:
    """Everything checked before anything is read for good or paid for."""
    items = parse_enrichments(enrichments)
    settings = storage_settings(storage_block)
    # Before anything is read or paid: overlapping paths would mix output and input rows.
    check_paths(source, destination, output_format, settings)
    reserved = [column for e in items for column in e.columns]
    resolved = validate_source(source, id_column, text_column, reserved, settings, part)
    api = api_block(batch_api)
    return Job(
        source=resolved,
        destination=destination,
        enrichments=items,
        settings=settings,
        batch_api=batch_api,
        api=api,
        limits=api.limits(shard_size),
        mode=mode,
        output_format=output_format,
        group_size=group_size,
    )


def storage_settings(block_name: str | None) -> StorageSettings | None:
    if not block_name:
        return None
    from blocks.storage import S3Storage

    return S3Storage.load(block_name).settings()


def lock_destination(job: Job, logger: Any) -> DestinationLock:
    """The destination's lock, taken before the state is touched: a second run would pay
    twice."""
    run_id = str(flow_run.get_id() or "")
    return DestinationLock(job.destination, job.settings, run_id, logger=logger)


def _estimate(job: Job, state: RunState) -> Any:
    return estimate_run(
        job.source,
        job.destination,
        job.group_size,
        job.enrichments,
        state,
        job.limits,
        job.mode,
        job.api.price_per_million_prompt_tokens,
    )


def dry_run(job: Job) -> EnrichReport:
    """Everything a run checks and plans, nothing sent, no lock taken, no state written."""
    state = RunState(job.destination, job.settings).peek()
    estimate = _estimate(job, state)
    markdown = estimate.to_markdown()
    create_markdown_artifact(
        key="enrich-estimate", markdown=markdown, description="What the run would send"
    )
    print(markdown, flush=True)
    return EnrichReport(
        source=job.source.url,
        destination=job.destination,
        backend=backend_label(job.batch_api, job.api),
        mode=job.mode,
        generation=state.generation,
        resumed=state.resumed,
        rows_in=job.source.num_rows,
        dry_run=True,
        estimate=estimate,
        enrichments={e.name: EnrichmentCounts() for e in job.enrichments},
    )


def check_run_budget(
    job: Job,
    state: RunState,
    max_lines: int | None,
    max_cost: float | None,
    logger: Any,
) -> None:
    """With a budget (the flow's, else the block's), walk the source as a dry run would and
    stop before the first batch if the run would send more."""
    budget_lines = max_lines or job.api.max_lines_per_run
    budget_cost = max_cost or job.api.max_cost_per_run
    if budget_lines is None and budget_cost is None:
        return
    planned = _estimate(job, state)
    check_budget(planned, budget_lines, budget_cost, job.source.url)
    logger.info(
        "within budget: %d request lines in %d batches (max_lines_per_run %s, "
        "estimated cost %s, max_cost_per_run %s)",
        planned.lines_to_send,
        planned.batches_to_send,
        budget_lines,
        "unknown" if planned.cost() is None else f"{planned.cost():.2f}",
        budget_cost,
    )


@contextmanager
def open_state(job: Job, logger: Any) -> Iterator[RunState]:
    """The generation this run resumes or starts; marked failed if the run fails, succeeded
    if it ends well."""
    state = RunState(job.destination, job.settings).begin(str(flow_run.get_id() or ""))
    logger.info(
        "generation %d (%s) for %d rows from %s",
        state.generation,
        "resumed" if state.resumed else "new",
        job.source.num_rows,
        job.source.url,
    )
    try:
        yield state
    except BaseException:
        state.finish(succeeded=False)
        raise
    state.finish(succeeded=True)


def peek_state(job: Job) -> RunState:
    return RunState(job.destination, job.settings).peek()


@dataclass(frozen=True)
class RunOptions:
    """How hard the run drives the API, and when it gives up."""

    max_in_flight: int
    parallel_submissions: int
    poll_interval_seconds: float | None
    timeout_seconds: float
    max_line_attempts: int
    parallel_groups: int
    max_error_fraction: float


def new_report(job: Job, state: RunState, backend: Backend) -> EnrichReport:
    return EnrichReport(
        source=job.source.url,
        destination=job.destination,
        backend=backend.label,
        mode=job.mode,
        generation=state.generation,
        resumed=state.resumed,
        rows_in=job.source.num_rows,
        enrichments={e.name: EnrichmentCounts() for e in job.enrichments},
    )


def make_engine(job: Job, state: RunState, backend: Backend, options: RunOptions) -> BatchEngine:
    return BatchEngine(
        Ledger(state),
        backend.api,
        EngineOptions(
            limits=job.limits,
            max_in_flight=options.max_in_flight,
            parallel_submissions=options.parallel_submissions,
            poll_interval_seconds=options.poll_interval_seconds or backend.poll_interval_seconds,
            timeout_seconds=options.timeout_seconds,
            deadline=time.time() + options.timeout_seconds,
            max_line_attempts=options.max_line_attempts,
            models={e.name: e.model for e in job.enrichments},
            total_lines=job.source.num_rows * len(job.enrichments),
        ),
    )


def provenance(
    backend_label: str, enrichments: list[Enrichment], state: RunState, mode: str
) -> dict[str, str]:
    """The run's provenance, written with its output (Parquet key-value metadata, Delta commit
    metadata)."""
    return {
        "batch_enrich.backend": backend_label,
        "batch_enrich.flow_run_id": str(flow_run.get_id() or ""),
        "batch_enrich.spec_hash": spec_hash(enrichments),
        "batch_enrich.enrichments": json.dumps([e.model_dump(mode="json") for e in enrichments]),
        "batch_enrich.generation": str(state.generation),
        "batch_enrich.mode": mode,
        "batch_enrich.written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class _Output:
    """The run's sink, opened with the first group's schema; aborted unless committed."""

    def __init__(self, job: Job, state: RunState, backend: Backend) -> None:
        self.job, self.state, self.backend = job, state, backend
        self.sink: Sink | None = None

    def write(self, group: pa.Table, lines: Any, results: pa.Table) -> pa.Table:
        job = self.job
        if self.sink is None:
            metadata = provenance(self.backend.label, job.enrichments, self.state, job.mode)
            sink = make_sink(job.output_format, job.destination, self.state, job.settings)
            sink.open(output_schema(group.schema, job.enrichments, metadata), metadata)
            self.sink = sink
        enriched = merge_group(group, lines, results, job.enrichments, self.sink.schema)
        self.sink.write(enriched)
        return enriched

    def commit(self) -> str:
        if self.sink is None:
            raise RuntimeError("the source yielded no rows")
        return self.sink.commit()

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()


def run_groups(
    job: Job,
    state: RunState,
    backend: Backend,
    lock: DestinationLock,
    options: RunOptions,
    runner: TaskRunner,
) -> EnrichReport:
    """Every group of the source through the run's one batch engine and into the sink, which
    is committed if the error budget holds; on any failure nothing becomes visible."""
    report = new_report(job, state, backend)
    engine = make_engine(job, state, backend, options)
    progress = create_progress_artifact(
        progress=0.0,
        key="enrich-progress",
        description=f"Lines enriched, out of {engine.options.total_lines}",
    )

    def publish(snapshot: Any) -> None:
        update_progress_artifact(progress, round(100.0 * snapshot.fraction, 1))

    output = _Output(job, state, backend)
    try:
        with ThreadPoolTaskRunner(max_workers=1) as driver_runner, runner:
            driver = driver_runner.submit(run_batches, {"engine": engine, "on_progress": publish})
            try:
                _feed(job, state, engine, driver, lock, options, runner, output, report)
            except BaseException:
                engine.stop()  # before the runner waits for the engine's task
                raise
            engine_report = driver.result()
        check_error_budget(report, options.max_error_fraction)
        report.output_path = output.commit()
        update_progress_artifact(progress, 100.0)
    except BaseException:
        engine.stop()
        output.abort()
        raise
    report.shards_in_doubt = engine_report.in_doubt
    report.rate_limited = engine_report.rate_limited
    report.polls = engine_report.polls
    return report


def _feed(
    job: Job,
    state: RunState,
    engine: BatchEngine,
    driver: PrefectFuture[EngineReport],
    lock: DestinationLock,
    options: RunOptions,
    runner: TaskRunner,
    output: _Output,
    report: EnrichReport,
) -> None:
    """Read groups ahead of the merge (a bounded lookahead), hand them to the engine, and
    merge them in source order as they complete."""
    lookahead = lookahead_groups(
        job.group_size,
        len(job.enrichments),
        job.limits.max_lines,
        options.max_in_flight,
        options.parallel_groups,
    )
    window: deque[tuple[pa.Table, PreparedGroup, Future[GroupOutcome] | None]] = deque()

    def merge_next() -> None:
        group, prepared, pending = window.popleft()
        if pending is None:
            assert prepared.recorded is not None
            outcome = GroupOutcome(prepared.lines, prepared.recorded)
        else:
            outcome = _wait(pending, driver)
            state.write_group(prepared.lines.key, outcome.results)
            engine.group_recorded(prepared.lines.index)
        enriched = output.write(group, outcome.lines, outcome.results)
        _tally(report, outcome, enriched, job.enrichments)

    for index, group in enumerate(iter_groups(job.source, job.group_size)):
        lock.ensure_held()
        prepared = runner.submit(
            prepare_group,
            {
                "group": group,
                "index": index,
                "enrichments": job.enrichments,
                "source": job.source,
                "state": state,
                "limits": job.limits,
                "incremental": job.incremental,
            },
        ).result()
        if prepared.recorded is not None and not prepared.pending:
            engine.group_recorded(index)
            window.append((group, prepared, None))
        else:
            window.append((group, prepared, engine.add_group(prepared.lines, prepared.pending)))
        while len(window) >= lookahead:
            merge_next()
    engine.close_input()
    while window:
        merge_next()


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


def publish_report(report: EnrichReport, started: float, logger: Any) -> EnrichReport:
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
