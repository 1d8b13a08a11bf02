"""What the user asks for: the enrichments of a job, typed so the Prefect UI renders a form.

Each enrichment has a `name` (it becomes the output column) and the same fields as the Batch
API body of its `model`; `request_body` turns it into that body for one document.

A job gives its enrichments in either of two shapes, which `parse_enrichments` reads alike:

- a list of items, each with its `model` (the job JSON and the API's own shape):
  `[{"name": "summary", "model": "summarize", "instructions": "One sentence."}, ...]`
- one list per model, items without `model` (the shape the Prefect UI renders as a form, since
  it shows a list of mixed models only as raw JSON):
  `{"extract": [...], "summarize": [{"name": "summary", "instructions": "One sentence."}],
  "classify": [...]}`

The UI fills a field it has no value for with the default its schema shows and sends `null`
for an optional one, which its own validation then refuses. So optional fields show a plain
input whose blank value (`""`, or `0` for a number) means "not set"; these types turn it back
into None.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
)

from batchapi.models import (
    SUMMARIZE_DEFAULT_MAX_TOKENS,
    ClassifyBody,
    ExtractBody,
    Label,
    SummarizeBody,
)

# Output columns are `name`, `name_error` and (classify) `name_scores`; keep names plain.
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,47}$"
MODELS = ("extract", "summarize", "classify")


def described(description: str, **constraints: Any) -> Any:
    """`Field(description=...)` that also reaches a Prefect flow's parameter form.

    Prefect builds each flow parameter's schema with a `Field` of its own whose description
    (from the docstring, else None) replaces the one in the annotation; `json_schema_extra`
    is merged instead.
    """
    extra = {"description": description, **constraints.pop("json_schema_extra", {})}
    return Field(description=description, json_schema_extra=extra, **constraints)


def _blank_is_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    if type(value) in (int, float) and value == 0:
        return None
    return value


# Optional values that a form shows as a plain input (no "str | None" toggle): blank is None.
OptionalText = Annotated[
    str | None,
    BeforeValidator(_blank_is_none),
    WithJsonSchema({"type": "string"}),
    Field(json_schema_extra={"default": ""}),
]
OptionalCount = Annotated[
    Annotated[int, Field(ge=1)] | None,
    BeforeValidator(_blank_is_none),
    WithJsonSchema({"type": "integer", "minimum": 0}),
    Field(json_schema_extra={"default": 0}),
]
OptionalSeconds = Annotated[
    Annotated[float, Field(gt=0)] | None,
    BeforeValidator(_blank_is_none),
    WithJsonSchema({"type": "number", "minimum": 0}),
    Field(json_schema_extra={"default": 0}),
]


class ClassLabel(BaseModel):
    """One candidate label of a classify enrichment."""

    model_config = ConfigDict(extra="forbid", title="label")

    name: str = Field(min_length=1, description="The label, as it appears in the output.")
    rubric: str = Field(
        default="", description="A yes/no question that is 'yes' when the label applies."
    )


def _item(fields: type[BaseModel], example: dict[str, Any]) -> Any:
    """A list item whose schema carries `example` as its default, so that the form's "Add
    item" starts from a valid item rather than from an empty one."""
    return Annotated[fields, Field(json_schema_extra={"default": example})]


LabelItem = _item(ClassLabel, {"name": "other", "rubric": "Is it about anything else?"})


# ---------------------------------------------------------------------------- fields


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="Output column name (letters, digits, underscore; at most 48 characters).",
    )


class ExtractFields(_Fields):
    model_config = ConfigDict(title="extract")

    entities: dict[str, str] = Field(
        description="Entity label -> plain-English description, e.g. {'person': 'a person'}."
    )
    instruction: OptionalText = Field(default=None, description="Extra guidance for extraction.")

    @field_validator("entities")
    @classmethod
    def _some_entities(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(
                "entities is empty: give at least one label, e.g. {'person': 'a person name'}"
            )
        return value


class SummarizeFields(_Fields):
    model_config = ConfigDict(title="summarize")

    instructions: OptionalText = Field(
        default=None, description="How to summarise, e.g. 'One sentence.'"
    )
    max_tokens: int = Field(
        default=SUMMARIZE_DEFAULT_MAX_TOKENS, ge=1, description="Longest summary, in tokens."
    )


class ClassifyFields(_Fields):
    model_config = ConfigDict(title="classify")

    labels: list[LabelItem] = Field(  # type: ignore[valid-type]
        description="Candidate labels, each a name and a rubric (a yes/no question)."
    )
    system_prompt: OptionalText = Field(
        default=None, description="Extra instructions for the classifier."
    )

    @field_validator("labels")
    @classmethod
    def _some_labels(cls, value: list[ClassLabel]) -> list[ClassLabel]:
        if not value:
            raise ValueError(
                "labels is empty: give at least one {name, rubric}, e.g. "
                "{'name': 'billing', 'rubric': 'Is it about a payment?'}"
            )
        names = [label.name for label in value]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        return value


# ---------------------------------------------------------------------------- enrichments


class _Enrichment(BaseModel):
    @property
    def columns(self) -> list[str]:
        return [self.name, f"{self.name}_error"]  # type: ignore[attr-defined]

    def spec_hash(self) -> str:
        """A short, stable digest of everything that changes this enrichment's results."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


class ExtractEnrichment(_Enrichment, ExtractFields):
    model_config = ConfigDict(title="ExtractEnrichment")

    model: Literal["extract"] = "extract"

    def request_body(self, text: str) -> ExtractBody:
        return ExtractBody(text=text, entities=self.entities, instruction=self.instruction)


class SummarizeEnrichment(_Enrichment, SummarizeFields):
    model_config = ConfigDict(title="SummarizeEnrichment")

    model: Literal["summarize"] = "summarize"

    def request_body(self, text: str) -> SummarizeBody:
        return SummarizeBody(text=text, instructions=self.instructions, max_tokens=self.max_tokens)


class ClassifyEnrichment(_Enrichment, ClassifyFields):
    model_config = ConfigDict(title="ClassifyEnrichment")

    model: Literal["classify"] = "classify"

    @property
    def columns(self) -> list[str]:
        return [self.name, f"{self.name}_scores", f"{self.name}_error"]

    def request_body(self, text: str) -> ClassifyBody:
        labels = [Label(name=label.name, rubric=label.rubric) for label in self.labels]
        return ClassifyBody(text=text, labels=labels, system_prompt=self.system_prompt)


Enrichment = Annotated[
    ExtractEnrichment | SummarizeEnrichment | ClassifyEnrichment, Field(discriminator="model")
]
ENRICHMENTS_ADAPTER: TypeAdapter[list[Enrichment]] = TypeAdapter(list[Enrichment])
_ENRICHMENT_ADAPTER: TypeAdapter[Enrichment] = TypeAdapter(Enrichment)


# ---------------------------------------------------------------------------- the form


# Named so as not to clash with an existing item; the user renames them.
ExtractItem = _item(
    ExtractFields, {"name": "new_entities", "entities": {"person": "a person's name"}}
)
SummarizeItem = _item(
    SummarizeFields, {"name": "new_summary", "instructions": "One sentence.", "max_tokens": 120}
)
ClassifyItem = _item(
    ClassifyFields,
    {
        "name": "new_topic",
        "labels": [
            {"name": "billing", "rubric": "Is it about a payment, invoice or refund?"},
            {"name": "other", "rubric": "Is it about anything else?"},
        ],
    },
)


class EnrichmentsByModel(BaseModel):
    """The enrichments of a job as one list per model (the form's shape)."""

    model_config = ConfigDict(extra="forbid", title="by model")

    extract: list[ExtractItem] = described(  # type: ignore[valid-type]
        "Entity extraction: each item adds a column of the entities found.",
        default_factory=list,
    )
    summarize: list[SummarizeItem] = described(  # type: ignore[valid-type]
        "Summaries: each item adds a text column.", default_factory=list
    )
    classify: list[ClassifyItem] = described(  # type: ignore[valid-type]
        "Classification: each item adds the top label and a column of label scores.",
        default_factory=list,
    )

    def to_list(self) -> list[Enrichment]:
        return [
            *(ExtractEnrichment(**item.model_dump()) for item in self.extract),
            *(SummarizeEnrichment(**item.model_dump()) for item in self.summarize),
            *(ClassifyEnrichment(**item.model_dump()) for item in self.classify),
        ]


# The `enrichments` flow parameter: the form's shape first (what the UI opens with for a
# deployment whose parameters are in it), the list of items as the alternative.
EnrichmentsParameter = Annotated[
    EnrichmentsByModel
    | Annotated[list[Enrichment], Field(title="list of {name, model, ...} (JSON)")],
    described(
        "What to add, one list per model; each item's name becomes an output column. A list "
        'of {"name", "model", ...} items, as in a job file, is accepted too.'
    ),
]


class EnrichmentSpecError(ValueError):
    """The `enrichments` parameter cannot be run; the message says how to fix it."""


def _by_model(raw: dict[str, Any] | EnrichmentsByModel) -> list[Enrichment]:
    if isinstance(raw, EnrichmentsByModel):
        return raw.to_list()
    unknown = sorted(set(raw) - set(MODELS))
    if unknown:
        raise EnrichmentSpecError(
            f"enrichments has unknown model(s) {unknown}; give one list per model among "
            f"{list(MODELS)}, or a list of items each with its 'model'"
        )
    items: list[Enrichment] = []
    for model in MODELS:
        group = raw.get(model) or []
        if not isinstance(group, list):
            raise EnrichmentSpecError(f"enrichments.{model} must be a list of items")
        for index, item in enumerate(group):
            if isinstance(item, BaseModel):
                item = item.model_dump()
            if not isinstance(item, dict):
                raise EnrichmentSpecError(f"enrichments.{model}[{index}] must be an object")
            if item.get("model", model) != model:
                raise EnrichmentSpecError(
                    f"enrichments.{model}[{index}] says model {item['model']!r}; move it to "
                    f"the {item['model']!r} list or drop its 'model'"
                )
            try:
                items.append(_ENRICHMENT_ADAPTER.validate_python({**item, "model": model}))
            except ValueError as exc:
                raise EnrichmentSpecError(f"enrichments.{model}[{index}]: {exc}") from None
    return items


def _from_list(raw: list[Any]) -> list[Enrichment]:
    items: list[Enrichment] = []
    for index, item in enumerate(raw):
        if isinstance(item, BaseModel):
            item = item.model_dump()
        model = item.get("model") if isinstance(item, dict) else None
        if model not in MODELS:
            raise EnrichmentSpecError(
                f"enrichments[{index}]: unknown model {model!r}; "
                "use one of 'extract', 'summarize', 'classify'"
            )
        try:
            items.append(_ENRICHMENT_ADAPTER.validate_python(item))
        except ValueError as exc:
            raise EnrichmentSpecError(f"enrichments[{index}] ({model}): {exc}") from None
    return items


def parse_enrichments(raw: object) -> list[Enrichment]:
    """Validate the `enrichments` parameter, with errors that name the item and the fix.

    Takes a list of items with their `model`, or one list per model (a dict or an
    `EnrichmentsByModel`); returns the items in order (by model: extract, summarize, classify).
    """
    example = '[{"name": "summary", "model": "summarize", "instructions": "One sentence."}]'
    if isinstance(raw, (dict, EnrichmentsByModel)):
        items = _by_model(raw)
    elif isinstance(raw, list):
        items = _from_list(raw)
    else:
        raise EnrichmentSpecError(f"enrichments must be a non-empty list, e.g. {example}")
    if not items:
        raise EnrichmentSpecError(
            f"enrichments must be a non-empty list, e.g. {example}, or one list per model, "
            'e.g. {"summarize": [{"name": "summary", "instructions": "One sentence."}]}'
        )
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
