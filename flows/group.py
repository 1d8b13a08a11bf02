"""One group of documents, from request lines to recorded results: the unit of parallelism.

`enrich_group` is a Prefect task composed of the step tasks; the main flow submits one per
group to its task runner (threads, or Dask workers), so groups can run side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from batchapi.models import BatchLimits
from tasks.batch import RETRYABLE_LINE_CODES, ApiSettings, run_shards
from tasks.merge import results_for
from tasks.read import Source
from tasks.shard import GroupLines, build_group_lines, plan_shards, set_aside_oversized
from tasks.spec import Enrichment
from tasks.state import RunState


@dataclass(frozen=True)
class GroupOptions:
    limits: BatchLimits
    max_in_flight: int
    poll_interval_seconds: float
    timeout_seconds: float
    deadline: float  # wall clock (time.time()), valid across processes
    run_started: float
    max_line_attempts: int
    incremental: bool

    @property
    def polling_window_seconds(self) -> float:
        """How long one `run-batches` attempt polls before Prefect retries (and shows) it."""
        return min(60.0, max(5.0, 10 * self.poll_interval_seconds))


@dataclass
class GroupOutcome:
    lines: GroupLines
    results: pa.Table
    batches_submitted: int = 0
    batches_reattached: int = 0
    lines_sent: int = 0
    prompt_tokens: int = 0


def carry_over(lines: GroupLines, state: RunState) -> None:
    """Reuse the last successful run's results for unchanged (document, enrichment) pairs."""
    previous = state.previous_results()
    if previous is None:
        return
    for custom_id, row in previous.lookup(list(lines.requests)).items():
        if row["error"] is None or row["error_code"] not in RETRYABLE_LINE_CODES:
            lines.known[custom_id] = row
            lines.carried_over[lines.enrichment_of(custom_id)] += 1


def _rounds(
    lines: GroupLines, state: RunState, api: ApiSettings, options: GroupOptions
) -> GroupOutcome:
    outcome = GroupOutcome(lines, pa.table({}))
    recorded: list[pa.Table] = []
    pending = [c for c in lines.requests if c not in lines.known]
    pending = set_aside_oversized(lines, pending, options.limits)
    window = options.polling_window_seconds
    runner = run_shards.with_options(
        retries=math.ceil(options.timeout_seconds / window) + 10,
        retry_delay_seconds=options.poll_interval_seconds,
    )
    for attempt in range(1, options.max_line_attempts + 1):
        if not pending:
            break
        shards = plan_shards(lines, pending, attempt, options.limits, state)
        report = runner.with_options(task_run_name=f"run-batches-g{lines.index}-a{attempt}")(
            shards,
            state,
            api,
            options.max_in_flight,
            options.poll_interval_seconds,
            options.deadline,
            options.timeout_seconds,
            window,
            run_started=options.run_started,
        )
        outcome.batches_submitted += report.submitted
        outcome.batches_reattached += report.reattached
        outcome.lines_sent += len(pending)
        outcome.prompt_tokens += report.prompt_tokens
        tables = [state.read_results(s.shard_id) for s in shards]
        round_results = pa.concat_tables([t for t in tables if t is not None])
        recorded.append(round_results)
        codes = round_results.column("error_code").to_pylist()
        ids = round_results.column("custom_id").to_pylist()
        pending = [c for c, code in zip(ids, codes, strict=True) if code in RETRYABLE_LINE_CODES]
    outcome.results = results_for(lines, recorded)
    state.write_group(lines.key, outcome.results)
    return outcome


@task(name="enrich-group", cache_policy=NO_CACHE, task_run_name="enrich-group-{index}")
def enrich_group(
    group: pa.Table,
    index: int,
    enrichments: list[Enrichment],
    source: Source,
    state: RunState,
    api: ApiSettings,
    options: GroupOptions,
) -> GroupOutcome:
    """Send what is pending, retry retryable line failures, record every result of the group.

    A group already recorded in this generation (a rerun after a crash) costs no request.
    """
    lines = build_group_lines(group, index, enrichments, source.id_column, source.text_column)
    results = state.read_group(lines.key)
    if results is not None:
        outcome = GroupOutcome(lines, results)
    else:
        if options.incremental:
            carry_over(lines, state)
        outcome = _rounds(lines, state, api, options)
    lines.requests = {}  # not needed by the merge; keep what crosses processes small
    return outcome
