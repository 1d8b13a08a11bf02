"""The schema the Prefect UI builds the custom-run form from, as Prefect derives it from the
flow: typed fields for each enrichment, a description for every parameter, valid "Add item"
defaults, and no value the form would fill in that its own validation refuses."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml
from prefect.utilities.callables import parameter_schema

from deployments.definitions import PREFECT_YAML
from flows.enrich import enrich_documents
from tasks.spec import MODELS, parse_enrichments


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return parameter_schema(enrich_documents).model_dump_for_openapi()


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["definitions"][ref.rsplit("/", 1)[1]] if ref else node


def walk(schema: dict[str, Any], node: dict[str, Any], seen: set[str] | None = None):
    """Every property schema reachable from `node`, with its path."""
    seen = set() if seen is None else seen
    ref = node.get("$ref")
    if ref:
        if ref in seen:
            return
        seen.add(ref)
    node = resolve(schema, node)
    for name, child in (node.get("properties") or {}).items():
        yield name, child
        yield from walk(schema, child, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from walk(schema, node[key], seen)
    for option in node.get("anyOf", []) + node.get("oneOf", []):
        yield from walk(schema, option, seen)


def test_every_parameter_shows_a_description(schema: dict[str, Any]) -> None:
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"flow parameter {name!r} has no description in the UI"
    by_model = resolve(schema, schema["properties"]["enrichments"]["anyOf"][0])
    for name, prop in walk(schema, by_model):
        assert prop.get("description"), f"enrichment field {name!r} has no description"


def test_enrichments_open_as_one_form_list_per_model(schema: dict[str, Any]) -> None:
    enrichments = schema["properties"]["enrichments"]
    by_model, as_list = enrichments["anyOf"]
    by_model = resolve(schema, by_model)
    assert by_model["type"] == "object" and list(by_model["properties"]) == list(MODELS)
    expected = {
        "extract": {"name", "entities", "instruction"},
        "summarize": {"name", "instructions", "max_tokens"},
        "classify": {"name", "labels", "system_prompt"},
    }
    for model, fields in expected.items():
        items = by_model["properties"][model]["items"]
        item = resolve(schema, items)
        # A form of fields, not a JSON editor: an object with typed properties, no union.
        assert item["type"] == "object" and set(item["properties"]) == fields
        assert "anyOf" not in items and "oneOf" not in items
        # "Add item" starts from the item's default, which is valid on its own.
        (parsed,) = parse_enrichments({model: [items["default"]]})
        assert parsed.model == model
        jsonschema.validate(
            {model: [items["default"]]}, {**by_model, "definitions": schema["definitions"]}
        )
    label = resolve(schema, resolve(schema, by_model["properties"]["classify"]["items"]))
    label_items = label["properties"]["labels"]["items"]
    assert set(resolve(schema, label_items)["properties"]) == {"name", "rubric"}
    assert label_items["default"]["name"]
    # The list of {name, model, ...} items of a job file stays accepted.
    assert as_list["type"] == "array"


def test_optional_values_are_plain_inputs_whose_defaults_pass_validation(
    schema: dict[str, Any],
) -> None:
    """The form fills in each default it shows and validates the result against the schema:
    a `null` default or an `int | None` union (shown as a toggle) would not survive that."""
    nodes = list(schema["properties"].items()) + list(
        walk(schema, schema["properties"]["enrichments"]["anyOf"][0])
    )
    for name, prop in nodes:
        assert {"type": "null"} not in prop.get("anyOf", []), f"{name!r} shows a None toggle"
        if "default" in prop:
            assert prop["default"] is not None, f"{name!r} defaults to null"
            jsonschema.validate(prop["default"], {**prop, "definitions": schema["definitions"]})
    for name in ("shard_size", "poll_interval_seconds", "storage_block"):
        assert schema["properties"][name]["type"] in ("integer", "number", "string")


def test_what_the_form_sends_runs_as_the_job_file_would(schema: dict[str, Any]) -> None:
    """The form sends every default it shows: blanks for optional values, a list per model."""
    from pydantic import TypeAdapter

    from flows.cli import flow_parameters

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    on_demand = next(d for d in spec["deployments"] if d["name"] == "on-demand")
    sent = {
        name: prop["default"] for name, prop in schema["properties"].items() if "default" in prop
    }
    sent.update(on_demand["parameters"])
    jsonschema.validate(sent, schema)
    parameters = {p.name: p for p in flow_parameters(enrich_documents.fn)}
    values = {name: parameters[name].adapter.validate_python(value) for name, value in sent.items()}
    assert values["shard_size"] is None and values["poll_interval_seconds"] is None
    assert values["storage_block"] is None
    names = [e.name for e in parse_enrichments(values["enrichments"])]
    assert names == ["people", "summary", "topic"]
    as_list = TypeAdapter(parameters["enrichments"].annotation).validate_python(
        [{"name": "summary", "model": "summarize"}]
    )
    assert [e.name for e in parse_enrichments(as_list)] == ["summary"]
