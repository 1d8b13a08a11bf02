"""The run report: returned by the flow and published as a markdown artifact."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EnrichmentCounts(BaseModel):
    ok: int = 0
    errors: int = 0
    carried_over: int = 0


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
    shards_in_doubt: list[str] = Field(default_factory=list)  # on the wire when a run stopped
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
