"""What the user asks for: the enrichments of a job, typed so the Prefect UI renders a form.

Each enrichment has a `name` (it becomes the output column) and the same fields as the Batch
API body of its `model`; `request_body` turns it into that body for one document.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from batchapi.models import (
    SUMMARIZE_DEFAULT_MAX_TOKENS,
    ClassifyBody,
    ExtractBody,
    Label,
    SummarizeBody,
)

# Output columns are `name`, `name_error` and (classify) `name_scores`; keep names plain.
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,47}$"


class _Enrichment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="Output column name (letters, digits, underscore; at most 48 characters).",
    )

    @property
    def columns(self) -> list[str]:
        return [self.name, f"{self.name}_error"]

    def spec_hash(self) -> str:
        """A short, stable digest of everything that changes this enrichment's results."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


class ExtractEnrichment(_Enrichment):
    model: Literal["extract"] = "extract"
    entities: dict[str, str] = Field(
        description="Entity label -> plain-English description, e.g. {'person': 'a person'}."
    )
    instruction: str | None = Field(default=None, description="Extra guidance for extraction.")

    @field_validator("entities")
    @classmethod
    def _some_entities(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(
                "entities is empty: give at least one label, e.g. {'person': 'a person name'}"
            )
        return value

    def request_body(self, text: str) -> ExtractBody:
        return ExtractBody(text=text, entities=self.entities, instruction=self.instruction)


class SummarizeEnrichment(_Enrichment):
    model: Literal["summarize"] = "summarize"
    instructions: str | None = Field(default=None, description="e.g. 'One sentence.'")
    max_tokens: int = Field(default=SUMMARIZE_DEFAULT_MAX_TOKENS, ge=1)

    def request_body(self, text: str) -> SummarizeBody:
        return SummarizeBody(text=text, instructions=self.instructions, max_tokens=self.max_tokens)


class ClassifyEnrichment(_Enrichment):
    model: Literal["classify"] = "classify"
    labels: list[Label] = Field(
        description="Candidate labels, each {name, rubric}; rubric is a yes/no question."
    )
    system_prompt: str | None = Field(default=None, description="Extra classifier instructions.")

    @field_validator("labels")
    @classmethod
    def _some_labels(cls, value: list[Label]) -> list[Label]:
        if not value:
            raise ValueError(
                "labels is empty: give at least one {name, rubric}, e.g. "
                "{'name': 'billing', 'rubric': 'Is it about a payment?'}"
            )
        names = [label.name for label in value]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        return value

    @property
    def columns(self) -> list[str]:
        return [self.name, f"{self.name}_scores", f"{self.name}_error"]

    def request_body(self, text: str) -> ClassifyBody:
        return ClassifyBody(text=text, labels=self.labels, system_prompt=self.system_prompt)


Enrichment = Annotated[
    ExtractEnrichment | SummarizeEnrichment | ClassifyEnrichment, Field(discriminator="model")
]
ENRICHMENTS_ADAPTER: TypeAdapter[list[Enrichment]] = TypeAdapter(list[Enrichment])


class EnrichmentSpecError(ValueError):
    """The `enrichments` parameter cannot be run; the message says how to fix it."""


def parse_enrichments(raw: object) -> list[Enrichment]:
    """Validate the `enrichments` parameter, with errors that name the item and the fix."""
    if not isinstance(raw, list) or not raw:
        raise EnrichmentSpecError(
            "enrichments must be a non-empty list, e.g. "
            '[{"name": "summary", "model": "summarize", "instructions": "One sentence."}]'
        )
    items: list[Enrichment] = []
    for index, item in enumerate(raw):
        if isinstance(item, BaseModel):
            item = item.model_dump()
        model = item.get("model") if isinstance(item, dict) else None
        if model not in ("extract", "summarize", "classify"):
            raise EnrichmentSpecError(
                f"enrichments[{index}]: unknown model {model!r}; "
                "use one of 'extract', 'summarize', 'classify'"
            )
        try:
            items.append(TypeAdapter(Enrichment).validate_python(item))
        except ValueError as exc:
            raise EnrichmentSpecError(f"enrichments[{index}] ({model}): {exc}") from None
    names = [item.name for item in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EnrichmentSpecError(f"enrichment names must be unique; repeated: {duplicates}")
    produced = [column for item in items for column in item.columns]
    clashes = sorted({c for c in produced if produced.count(c) > 1})
    if clashes:
        raise EnrichmentSpecError(
            f"enrichment names produce clashing output columns {clashes}; rename one of them"
        )
    return items


def spec_hash(enrichments: list[Enrichment]) -> str:
    return hashlib.blake2b(
        ",".join(item.spec_hash() for item in enrichments).encode(), digest_size=8
    ).hexdigest()
