"""What the user asks for: the enrichments of a job, typed so the Prefect UI renders a form.

Each enrichment is a `name` (it becomes the output column) plus the Batch API body of its
`model` without the text: the enrichment classes and the form are built from the model
registry (`batchapi.registry`), so the fields, their constraints and validators are the body's.

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
from copy import copy
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo

from batchapi.registry import REGISTRY, ModelSpec

# Output columns are `name`, `name_error` and what the model adds (`name_scores`, ...); keep
# names plain.
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,47}$"


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


def _item(fields: type[BaseModel], example: dict[str, Any]) -> Any:
    """A list item whose schema carries `example` as its default, so that the form's "Add
    item" starts from a valid item rather than from an empty one."""
    return Annotated[fields, Field(json_schema_extra={"default": example})]


# ---------------------------------------------------------------------------- fields


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="Output column name (letters, digits, underscore; at most 48 characters).",
    )

    @model_validator(mode="before")
    @classmethod
    def _nothing_empty(cls, data: Any) -> Any:
        # The body's lists and maps need an item; say so with one that works.
        if isinstance(data, dict):
            example = next(_EXAMPLES[k] for k in cls.__mro__ if k in _EXAMPLES)
            for field, info in cls.model_fields.items():
                value = data.get(field)
                if _needs_items(info) and isinstance(value, list | dict) and not value:
                    raise ValueError(
                        f"{field} is empty: give at least one, e.g. {example[field]!r}"
                    )
        return data


_EXAMPLES: dict[type, dict[str, Any]] = {}


def _needs_items(info: FieldInfo) -> bool:
    return any(getattr(m, "min_length", 0) for m in info.metadata)


def _public(model: type[BaseModel]) -> type[BaseModel]:
    """A class made here, importable by its name (so that pickle, hence Dask, finds it)."""
    globals()[model.__name__] = model
    return model


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """A nested model of the body as the form shows it: unknown fields refused."""
    config = ConfigDict(extra="forbid", title=model.__name__.lower())
    namespace = {"model_config": config, "__module__": __name__}
    return _public(type(model.__name__, (model,), namespace))


def _form_field(name: str, info: FieldInfo, example: dict[str, Any]) -> tuple[Any, FieldInfo]:
    """A body field as an enrichment has it: optional text is a plain input (blank is None),
    and a list of objects starts "Add item" from the example's last item."""
    annotation = info.annotation
    if annotation == str | None:
        return OptionalText, Field(default=None, description=info.description)
    item = get_args(annotation)[0] if get_origin(annotation) is list else None
    if isinstance(item, type) and issubclass(item, BaseModel):
        annotation = list[_item(_strict(item), example[name][-1])]  # type: ignore[misc]
    return annotation, copy(info)


def _fields_model(spec: ModelSpec) -> type[_Fields]:
    """`name` plus the model's request body without its text: one item of the form's list."""
    fields = {
        name: _form_field(name, info, spec.example)
        for name, info in spec.params.model_fields.items()
    }
    model: type[_Fields] = create_model(  # type: ignore[call-overload]
        f"{spec.name.title()}Fields",
        # The body's fields after `name` (fields come in reverse order of the bases).
        __base__=(spec.params, _Fields),
        __module__=__name__,
        __config__=ConfigDict(extra="forbid", title=spec.name),
        **fields,
    )
    _EXAMPLES[model] = spec.example
    return _public(model)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- enrichments


class _Enrichment(BaseModel):
    @property
    def spec(self) -> ModelSpec:
        return REGISTRY[self.model]  # type: ignore[attr-defined]

    def arrow_fields(self) -> list[pa.Field]:
        """The output columns of this enrichment, `name_error` last."""
        name: str = self.name  # type: ignore[attr-defined]
        return [*self.spec.fields(name, self), pa.field(f"{name}_error", pa.string())]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.arrow_fields()]

    def params(self) -> dict[str, Any]:
        """The request body without its text."""
        return self.model_dump(exclude={"name"})

    def request_body(self, text: str) -> BaseModel:
        """The request body of this enrichment for one document."""
        return self.spec.body.model_validate({**self.params(), "text": text})

    def spec_hash(self) -> str:
        """A short, stable digest of everything that changes this enrichment's results."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def _enrichment_model(spec: ModelSpec, fields: type[_Fields]) -> type[_Enrichment]:
    model = create_model(  # type: ignore[call-overload]
        f"{spec.name.title()}Enrichment",
        __base__=(_Enrichment, fields),
        __module__=__name__,
        __config__=ConfigDict(title=f"{spec.name.title()}Enrichment"),
        model=(Literal[spec.name], spec.name),  # type: ignore[valid-type]
    )
    return _public(model)  # type: ignore[return-value]


FIELDS: dict[str, type[_Fields]] = {}
ENRICHMENTS: dict[str, type[_Enrichment]] = {}
for _model_spec in REGISTRY.values():
    FIELDS[_model_spec.name] = _fields_model(_model_spec)
    ENRICHMENTS[_model_spec.name] = _enrichment_model(_model_spec, FIELDS[_model_spec.name])

MODELS = tuple(REGISTRY)
Enrichment = Annotated[
    Union[tuple(ENRICHMENTS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="model"),
]
ENRICHMENTS_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[Enrichment])
_ENRICHMENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Enrichment)


# ---------------------------------------------------------------------------- the form


def _by_model_field(spec: ModelSpec) -> tuple[Any, Any]:
    item = _item(FIELDS[spec.name], spec.example)
    return list[item], described(spec.description, default_factory=list)  # type: ignore[valid-type]


class _ByModel(BaseModel):
    model_config = ConfigDict(extra="forbid", title="by model")

    def to_list(self) -> list[Any]:
        return [
            ENRICHMENTS[model](**item.model_dump())
            for model in MODELS
            for item in getattr(self, model)
        ]


EnrichmentsByModel = create_model(
    "EnrichmentsByModel",
    __base__=_ByModel,
    __module__=__name__,
    __doc__="The enrichments of a job as one list per model (the form's shape).",
    **{spec.name: _by_model_field(spec) for spec in REGISTRY.values()},
)

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
                f"use one of {', '.join(map(repr, MODELS))}"
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
