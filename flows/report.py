"""The run report: returned by the flow and published as a markdown artifact."""

from __future__ import annotations

from pydantic import BaseModel, Field

from flows.estimate import RunEstimate
from tasks.shard import DOCUMENT_ERROR_CODES


class ErrorBudgetExceededError(RuntimeError):
    """Too many rows ended with an error: the previous output was left in place."""


def check_error_budget(report: EnrichReport, max_error_fraction: float) -> None:
    """Fail before the commit if more than `max_error_fraction` of the rows ended with an
    error in any enrichment (document errors aside)."""
    if not report.rows_in:
        return
    over = []
    for name, counts in report.enrichments.items():
        codes = {c: n for c, n in counts.error_codes.items() if c not in DOCUMENT_ERROR_CODES}
        failed = sum(codes.values())
        if failed / report.rows_in > max_error_fraction:
            top = ", ".join(
                f"{code} {n}" for code, n in sorted(codes.items(), key=lambda i: -i[1])[:3]
            )
            over.append(
                f"{name!r}: {failed} of {report.rows_in} rows "
                f"({100 * failed / report.rows_in:.1f}%; most common: {top})"
            )
    if over:
        raise ErrorBudgetExceededError(
            f"too many rows ended with an error, over max_error_fraction {max_error_fraction}: "
            + "; ".join(over)
            + ". The previous output was left in place and this run's results are kept: "
            "after fixing the cause, rerun the same job and it sends only the failed lines "
            "again; to accept these errors, rerun with a higher max_error_fraction."
        )


class EnrichmentCounts(BaseModel):
    ok: int = 0
    errors: int = 0
    carried_over: int = 0
    error_codes: dict[str, int] = Field(default_factory=dict)  # code -> rows


class EnrichReport(BaseModel):
    source: str
    destination: str
    output_path: str | None = None
    backend: str
    mode: str
    generation: int
    resumed: bool
    rows_in: int = 0
    rows_enriched: int = 0  # rows without an error in any enrichment
    groups: int = 0
    batches_submitted: int = 0
    batches_reattached: int = 0
    lines_sent: int = 0
    prompt_tokens: int = 0
    rate_limited: int = 0  # submissions the API refused with 429 (and were sent later)
    polls: int = 0  # status requests for open batches
    shards_in_doubt: list[str] = Field(default_factory=list)  # on the wire when a run stopped
    dry_run: bool = False
    estimate: RunEstimate | None = None  # what the run sends (a dry run) or sent first
    seconds: float = 0.0
    enrichments: dict[str, EnrichmentCounts] = Field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [
            "# Enrichment run",
            "",
            f"- **source**: `{self.source}`",
            f"- **output**: `{self.output_path or self.destination}`",
            f"- **backend**: {self.backend}",
            f"- **mode**: {self.mode} (generation {self.generation}"
            f"{', resumed' if self.resumed else ''})",
            "",
            "| rows in | rows enriched | groups | batches submitted | batches reattached "
            "| lines sent | prompt tokens | seconds |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {self.rows_in} | {self.rows_enriched} | {self.groups} | "
            f"{self.batches_submitted} | {self.batches_reattached} | {self.lines_sent} | "
            f"{self.prompt_tokens} | {self.seconds:.1f} |",
            "",
            "| enrichment | ok | errors | carried over |",
            "|---|---:|---:|---:|",
        ]
        for name, counts in self.enrichments.items():
            lines.append(f"| {name} | {counts.ok} | {counts.errors} | {counts.carried_over} |")
        if self.rate_limited:
            lines += [
                "",
                f"The API answered 429 to {self.rate_limited} submission(s); each was "
                "sent again later and the in-flight window adapted.",
            ]
        if self.shards_in_doubt:
            lines += [
                "",
                f"{len(self.shards_in_doubt)} shard(s) were on the wire when an earlier run "
                "stopped and were sent again (their batches may have been paid twice): "
                + ", ".join(f"`{s}`" for s in self.shards_in_doubt),
            ]
        return "\n".join(lines) + "\n"
