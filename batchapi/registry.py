"""The models of the Batch API, one entry each: everything the rest of the code knows of a model.

An entry names the model's request body (the wire model, `batchapi.models`), the body without
its text (what an enrichment sets: `tasks.spec` builds the enrichment and its form from it),
the domain result, the part of it a results store keeps, the Arrow fields an enrichment of the
model adds to the output and how stored results become those columns.

A new model is its wire models in `batchapi/models.py`, an entry here, and (for the embedded
emulator) an engine in `batchapi/emulator/engine.py`; nothing else names models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, TypeAdapter

from batchapi.models import (
    BODIES,
    ClassifyBody,
    ClassifyParams,
    ClassifyResult,
    DecodeError,
    ExtractBody,
    ExtractParams,
    ExtractResult,
    StoredClassification,
    StoredExtract,
    StoredSummary,
    SummarizeBody,
    SummarizeParams,
    SummarizeResult,
)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the API. `params` below is an enrichment of the model (its body without
    the text), `name` its output column."""

    name: str
    body: type[BaseModel]  # the request body, on the wire
    params: type[BaseModel]  # the body without `text` and `model`
    result: type[BaseModel]  # `choices[0].message.content` of an output line
    stored: type  # what a results store keeps of the result: a TypedDict
    # The Arrow schema of a stored result (as JSON) that reaches the output.
    stored_schema: Callable[[Any], pa.Schema]
    # The output fields of an enrichment, `name_error` aside.
    fields: Callable[[str, Any], list[pa.Field]]
    # Parsed stored results (a table of `stored_schema`) -> values of `fields`, in order.
    columns: Callable[[pa.Table, Any], list[pa.Array | pa.ChunkedArray]]
    # A valid enrichment of the model (without `model`), named so as not to clash with an
    # existing one: the form's "Add item" starts from it.
    example: dict[str, Any]
    # What an enrichment of the model adds, as the form says it.
    description: str


# --------------------------------------------------------------------------- extract

ENTITY_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("type", pa.string()),
        ("confidence", pa.float64()),
        ("start", pa.int64()),
        ("end", pa.int64()),
    ]
)
ENTITIES_TYPE = pa.list_(ENTITY_TYPE)

EXTRACT = ModelSpec(
    name="extract",
    body=ExtractBody,
    params=ExtractParams,
    result=ExtractResult,
    stored=StoredExtract,
    stored_schema=lambda params: pa.schema([("entities", ENTITIES_TYPE)]),
    fields=lambda name, params: [pa.field(name, ENTITIES_TYPE)],
    columns=lambda parsed, params: [parsed.column("entities")],
    example={"name": "new_entities", "entities": {"person": "a person's name"}},
    description="Entity extraction: each item adds a column of the entities found.",
)

# --------------------------------------------------------------------------- summarize

SUMMARIZE = ModelSpec(
    name="summarize",
    body=SummarizeBody,
    params=SummarizeParams,
    result=SummarizeResult,
    stored=StoredSummary,
    stored_schema=lambda params: pa.schema([("summary", pa.string())]),
    fields=lambda name, params: [pa.field(name, pa.string())],
    columns=lambda parsed, params: [parsed.column("summary")],
    example={"name": "new_summary", "instructions": "One sentence.", "max_tokens": 120},
    description="Summaries: each item adds a text column.",
)

# --------------------------------------------------------------------------- classify

SCORES_TYPE = pa.map_(pa.string(), pa.float64())


def _classify_stored_schema(params: ClassifyParams) -> pa.Schema:
    # Scores are read as a struct of the known labels: the JSON reader then needs no Python.
    scores = pa.struct([(label.name, pa.float64()) for label in params.labels])
    return pa.schema([("top_label", pa.string()), ("scores", scores)])


def _scores_map(scores: pa.ChunkedArray, labels: list[str]) -> pa.Array:
    """struct<label: double, ...> -> map<string, double>, keeping null rows null."""
    struct = scores.combine_chunks()
    rows, width = len(struct), len(labels)
    items = np.empty(rows * width, dtype=np.float64)
    for column, _ in enumerate(labels):
        items[column::width] = struct.field(column).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    mapped = pa.MapArray.from_arrays(
        offsets, pa.array(labels * rows, pa.string()), pa.array(items), type=SCORES_TYPE
    )
    if struct.null_count:
        mapped = pc.if_else(pc.is_valid(struct), mapped, pa.nulls(rows, SCORES_TYPE))
    return mapped


def _classify_columns(parsed: pa.Table, params: ClassifyParams) -> list[pa.Array]:
    labels = [label.name for label in params.labels]
    return [parsed.column("top_label"), _scores_map(parsed.column("scores"), labels)]


CLASSIFY = ModelSpec(
    name="classify",
    body=ClassifyBody,
    params=ClassifyParams,
    result=ClassifyResult,
    stored=StoredClassification,
    stored_schema=_classify_stored_schema,
    fields=lambda name, params: [
        pa.field(name, pa.string()),
        pa.field(f"{name}_scores", SCORES_TYPE),
    ],
    columns=_classify_columns,
    example={
        "name": "new_topic",
        "labels": [
            {"name": "billing", "rubric": "Is it about a payment, invoice or refund?"},
            {"name": "other", "rubric": "Is it about anything else?"},
        ],
    },
    description="Classification: each item adds the top label and a column of label scores.",
)

# --------------------------------------------------------------------------- the registry

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (EXTRACT, SUMMARIZE, CLASSIFY)}
assert tuple(spec.body for spec in REGISTRY.values()) == BODIES, "one entry per request body"


def model_spec(model: str) -> ModelSpec:
    try:
        return REGISTRY[model]
    except KeyError:
        raise ValueError(
            f"unknown model {model!r}; use one of {', '.join(map(repr, REGISTRY))}"
        ) from None


# One validator per stored shape, built once.
_STORED: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(spec.stored) for name, spec in REGISTRY.items()
}


def decode_content(custom_id: str, model: str, content: str | bytes, stored: bool = False) -> Any:
    """`choices[0].message.content` as the domain result of `model` (a model instance) or,
    with `stored`, the part of it a results store keeps (a plain dict), in one validating
    parse.

    Raises DecodeError when the model is unknown, or the content is not JSON or does not fit.
    """
    spec = REGISTRY.get(model)
    if spec is None:
        raise DecodeError(f"line {custom_id!r}: unknown model {model!r}")
    try:
        if stored:
            return _STORED[model].validate_json(content)
        return spec.result.model_validate_json(content)
    except ValueError as exc:
        raise DecodeError(
            f"line {custom_id!r}: content is not a valid {model} result: {exc}"
        ) from exc
