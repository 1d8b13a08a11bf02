"""What a run would send, before anything is sent: the dry run's report and the budget guard.

The estimate walks the source exactly as a run does (the same groups, request lines,
carry-over, byte-limit checks and shards, and the unfinished run it would resume), so its line
and batch counts are what a run sends on its first attempt; retries of lines that fail come on
top. Prompt tokens are the emulator's approximation (about four characters a token), an
estimate of what a provider bills.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from pydantic import BaseModel, Field

from batchapi.models import BatchLimits, approx_tokens
from flows.group import PreparedGroup, prepare_group
from tasks.ledger import Ledger
from tasks.read import Source, iter_groups
from tasks.shard import DOCUMENT_ERROR_CODES, split_into_shards
from tasks.spec import Enrichment
from tasks.state import RunState


class BudgetExceededError(ValueError):
    """A run would send more than its budget allows; nothing was sent."""


class EnrichmentEstimate(BaseModel):
    lines_to_send: int = 0
    carried_over: int = 0  # unchanged since the last successful run (incremental mode)
    already_recorded: int = 0  # results the unfinished run being resumed has recorded
    not_sent: int = 0  # empty text, unreadable objects, lines over the byte limit
    prompt_tokens: int = 0


class RunEstimate(BaseModel):
    source: str
    destination: str
    mode: str
    generation: int
    resumed: bool
    rows: int = 0
    batches_to_send: int = 0
    batches_to_reattach: int = 0  # submitted by the unfinished run; reattached, not paid again
    price_per_million_prompt_tokens: float | None = None
    enrichments: dict[str, EnrichmentEstimate] = Field(default_factory=dict)

    @property
    def lines_to_send(self) -> int:
        return sum(e.lines_to_send for e in self.enrichments.values())

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.enrichments.values())

    def cost(self, tokens: int | None = None) -> float | None:
        price = self.price_per_million_prompt_tokens
        if price is None:
            return None
        return (self.prompt_tokens if tokens is None else tokens) * price / 1_000_000

    def to_markdown(self) -> str:
        priced = self.price_per_million_prompt_tokens is not None
        lines = [
            "# Enrichment estimate (dry run: nothing was sent)",
            "",
            f"- **source**: `{self.source}` ({self.rows} rows)",
            f"- **destination**: `{self.destination}`",
            f"- **mode**: {self.mode} (generation {self.generation}"
            f"{', resuming an unfinished run' if self.resumed else ''})",
            f"- **batches to send**: {self.batches_to_send}"
            + (
                f" (and {self.batches_to_reattach} submitted earlier, to reattach)"
                if self.batches_to_reattach
                else ""
            ),
            "",
            "| enrichment | lines to send | carried over | already recorded | not sent "
            "| est. prompt tokens |" + (" est. cost |" if priced else ""),
            "|---|---:|---:|---:|---:|---:|" + ("---:|" if priced else ""),
        ]
        for name, e in self.enrichments.items():
            row = (
                f"| {name} | {e.lines_to_send} | {e.carried_over} | {e.already_recorded} | "
                f"{e.not_sent} | {e.prompt_tokens} |"
            )
            cost = self.cost(e.prompt_tokens)
            lines.append(row + (f" {cost:.2f} |" if cost is not None else ""))
        total_cost = self.cost()
        lines.append(
            f"| **total** | {self.lines_to_send} | | | | {self.prompt_tokens} |"
            + (f" {total_cost:.2f} |" if total_cost is not None else "")
        )
        lines += [
            "",
            "Lines and batches are what the run sends on its first attempt (retries of failed "
            "lines come on top). Prompt tokens are estimated at about four characters a token"
            + (
                f"; cost at {self.price_per_million_prompt_tokens} per million prompt tokens."
                if priced
                else "; set `price_per_million_prompt_tokens` on the BatchApi block for a cost."
            ),
        ]
        return "\n".join(lines) + "\n"


def _count_group(
    estimate: RunEstimate,
    group: pa.Table,
    prepared: PreparedGroup,
    text_column: str,
    limits: BatchLimits,
    ledger: Ledger,
) -> None:
    lines = prepared.lines
    enrichment_of = lines.enrichment_of
    if prepared.recorded is not None and not prepared.pending:
        for name, count in Counter(lines.lines.column("enrichment").to_pylist()).items():
            estimate.enrichments[name].already_recorded += count
        return
    for name, count in lines.carried_over.items():
        estimate.enrichments[name].carried_over += count
    for custom_id, row in lines.known.items():
        counts = estimate.enrichments[enrichment_of(custom_id)]
        if prepared.recorded is not None:
            counts.already_recorded += 1
        elif row["error_code"] in DOCUMENT_ERROR_CODES:
            counts.not_sent += 1
    texts = group.column(text_column).to_pylist()
    ids = lines.lines.column("custom_id").to_pylist()
    row_of = dict(zip(ids, lines.lines.column("row").to_pylist(), strict=True))
    shards = split_into_shards(prepared.pending, lines.requests, lines.index, 1, limits)
    for shard in shards:
        earlier = ledger.found.get(shard.shard_id)
        if earlier is not None and earlier.batch_id is not None:
            estimate.batches_to_reattach += 1
            continue
        estimate.batches_to_send += 1
        for custom_id in shard.custom_ids:
            counts = estimate.enrichments[enrichment_of(custom_id)]
            counts.lines_to_send += 1
            counts.prompt_tokens += approx_tokens(texts[row_of[custom_id]] or "")


def estimate_run(
    source: Source,
    destination: str,
    group_size: int,
    enrichments: list[Enrichment],
    state: RunState,
    limits: BatchLimits,
    mode: str,
    price_per_million_prompt_tokens: float | None,
) -> RunEstimate:
    """Walk the source as a run would and count what it would send; nothing is written."""
    estimate = RunEstimate(
        source=source.url,
        destination=destination,
        mode=mode,
        generation=state.generation,
        resumed=state.resumed,
        rows=source.num_rows,
        price_per_million_prompt_tokens=price_per_million_prompt_tokens,
        enrichments={e.name: EnrichmentEstimate() for e in enrichments},
    )
    ledger = Ledger(state)
    for index, group in enumerate(iter_groups(source, group_size)):
        prepared = prepare_group.fn(
            group, index, enrichments, source, state, limits, mode == "incremental"
        )
        _count_group(estimate, group, prepared, source.text_column, limits, ledger)
    return estimate


def check_budget(
    estimate: RunEstimate, max_lines: int | None, max_cost: float | None, source: str
) -> None:
    """Refuse, before the first batch, a run that would send more than its budget."""
    if max_lines is not None and estimate.lines_to_send > max_lines:
        raise BudgetExceededError(
            f"this run would send {estimate.lines_to_send} request lines "
            f"({estimate.batches_to_send} batches) from {source}, over max_lines_per_run "
            f"{max_lines}; nothing was sent. Check the source and the enrichments (a dry run, "
            "--dry-run, shows the lines per enrichment), or raise max_lines_per_run (a flow "
            "parameter, or the BatchApi block's setting)."
        )
    cost = estimate.cost()
    if max_cost is not None and cost is not None and cost > max_cost:
        raise BudgetExceededError(
            f"this run would cost about {cost:.2f} ({estimate.prompt_tokens} estimated prompt "
            f"tokens at {estimate.price_per_million_prompt_tokens} per million) from {source}, "
            f"over max_cost_per_run {max_cost}; nothing was sent. Check the source and the "
            "enrichments (--dry-run shows the estimate per enrichment), or raise "
            "max_cost_per_run (a flow parameter, or the BatchApi block's setting)."
        )
