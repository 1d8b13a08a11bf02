"""One group of documents made ready for the batch engine: its request lines and what is known.

`prepare_group` is a Prefect task; the main flow submits one per group to its task runner
(threads, or Dask workers), then hands the prepared lines to the run's one `BatchEngine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from batchapi.models import BatchLimits
from tasks.batch import RETRYABLE_LINE_CODES
from tasks.read import Source
from tasks.shard import GroupLines, build_group_lines, set_aside_oversized
from tasks.spec import Enrichment
from tasks.state import RunState

# Recorded errors a resumed run sends again: what a new attempt may fix, and content the API
# returned unreadable (a rerun after a failed error budget is usually a rerun after a fix).
RESEND_ON_RESUME = RETRYABLE_LINE_CODES | {"decode_error"}


@dataclass
class PreparedGroup:
    lines: GroupLines
    pending: list[str]  # custom ids to send
    recorded: pa.Table | None = None  # this generation recorded the group already (a rerun)


def carry_over(lines: GroupLines, state: RunState) -> None:
    """Reuse the last successful run's results for unchanged (document, enrichment) pairs."""
    previous = state.previous_results()
    if previous is None:
        return
    for custom_id, row in previous.lookup(list(lines.requests)).items():
        if row["error"] is None or row["error_code"] not in RETRYABLE_LINE_CODES:
            lines.known[custom_id] = row
            lines.carried_over[lines.enrichment_of(custom_id)] += 1


@task(name="prepare-group", cache_policy=NO_CACHE, task_run_name="prepare-group-{index}")
def prepare_group(
    group: pa.Table,
    index: int,
    enrichments: list[Enrichment],
    source: Source,
    state: RunState,
    limits: BatchLimits,
    incremental: bool,
) -> PreparedGroup:
    """Request lines of every (document, enrichment) pair, minus what needs no request: a
    group this generation already recorded, carried-over results, lines too large to send."""
    lines = build_group_lines(group, index, enrichments, source.id_column, source.text_column)
    if state.resumed:
        recorded = state.read_group(lines.key)
        if recorded is not None:
            return _resumed(lines, recorded)
    if incremental:
        carry_over(lines, state)
    pending = [c for c in lines.requests if c not in lines.known]
    return PreparedGroup(lines, set_aside_oversized(lines, pending, limits))


def _resumed(lines: GroupLines, recorded: pa.Table) -> PreparedGroup:
    """A group the unfinished run recorded: its results stand, except the errors worth
    another attempt, which are sent again."""
    resend = [
        row["custom_id"]
        for row in recorded.select(["custom_id", "error_code"]).to_pylist()
        if row["error_code"] in RESEND_ON_RESUME and row["custom_id"] in lines.requests
    ]
    if not resend:
        lines.requests = {}
        return PreparedGroup(lines, [], recorded)
    again = set(resend)
    lines.known = {
        row["custom_id"]: row for row in recorded.to_pylist() if row["custom_id"] not in again
    }
    return PreparedGroup(lines, resend, recorded)
