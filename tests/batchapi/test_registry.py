"""The model registry: each entry's wire models, enrichment, lines and output columns agree."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.engine import ENGINES
from batchapi.emulator.worker import process_request
from batchapi.models import BODIES, MODELS, BatchLimits, RequestLine, iter_jsonl
from batchapi.registry import REGISTRY, decode_content, model_spec
from tasks.batch import decode_output_bytes
from tasks.merge import merge_group, output_schema, results_for
from tasks.shard import build_group_lines, shard_payload, split_into_shards
from tasks.spec import ENRICHMENTS, parse_enrichments, spec_hash
from tasks.state import results_table

TEXTS = [
    "Maria Lopez of Acme Corp paid the invoice of $120 on 3 March. The refund followed.",
    "",  # nothing is sent for it: its columns are null and its error says why
    "The parcel was delivered late to Berlin. Shipping took nine days. Nobody called.",
]


def test_every_model_is_registered_once_with_its_wire_models_and_engine() -> None:
    assert tuple(REGISTRY) == MODELS == tuple(ENGINES) == tuple(ENRICHMENTS)
    for spec, body in zip(REGISTRY.values(), BODIES, strict=True):
        assert spec.body is body and issubclass(body, spec.params)
        assert body.model_fields["model"].default == spec.name
        # The enrichment is the body without its text, plus a name.
        enrichment = set(ENRICHMENTS[spec.name].model_fields)
        assert enrichment == set(body.model_fields) - {"text"} | {"name"}
        # What the store keeps is a part of the result.
        assert set(spec.stored.__annotations__) <= set(spec.result.model_fields)
    with pytest.raises(ValueError, match="unknown model 'translate'"):
        model_spec("translate")


@pytest.mark.parametrize("model", MODELS)
def test_a_line_round_trips_through_the_emulator_and_fills_the_registered_columns(
    model: str,
) -> None:
    spec = REGISTRY[model]
    (enrichment,) = parse_enrichments([{**spec.example, "model": model}])
    group = pa.table({"id": ["a", "b", "c"], "text": TEXTS})
    lines = build_group_lines(group, 0, [enrichment], "id", "text")
    assert len(lines.requests) == 2

    # Each line is the wire model serialised: it reads back as the enrichment's body.
    for custom_id, raw in lines.requests.items():
        line = RequestLine.model_validate_json(raw)
        assert line.custom_id == custom_id
        row = lines.lines.column("row")[lines.lines.column("custom_id").index(custom_id)]
        expected = enrichment.request_body(TEXTS[row.as_py()])
        assert line.body == expected
        assert raw.decode() == line.to_json()

    (shard,) = split_into_shards(list(lines.requests), lines.requests, 0, 1, BatchLimits())
    payload = shard_payload(lines, shard)
    assert [item["custom_id"] for item in iter_jsonl(payload)] == shard.custom_ids
    processed = process_request(payload, 1, EmulatorConfig())
    assert processed.completed == 2 and processed.failed == 0

    rows, tokens = decode_output_bytes(shard, lambda _: model, processed.output)
    assert tokens > 0 and all(r["error"] is None for r in rows)
    for r in rows:
        stored = decode_content(r["custom_id"], model, r["result"], stored=True)
        assert isinstance(stored, dict) and spec.stored.__required_keys__ <= stored.keys()
    results = results_for(lines, [results_table(rows)])
    metadata = {"batch_enrich.spec_hash": spec_hash([enrichment])}
    schema = output_schema(group.schema, [enrichment], metadata)
    enriched = merge_group.fn(group, lines, results, [enrichment], schema)

    added = enriched.schema.remove_metadata()
    assert added.names == ["id", "text", *enrichment.columns]
    assert list(added)[2:] == enrichment.arrow_fields()
    values = enriched.column(enrichment.name).to_pylist()
    assert values[0] is not None and values[1] is None and values[2] is not None
    assert enriched.column(f"{enrichment.name}_error").to_pylist()[1].startswith("text is empty")


def test_spec_hashes_are_those_of_earlier_runs() -> None:
    """Spec hashes are kept in users' run state: a changed hash would resend every line."""
    enrichments = parse_enrichments(
        [
            {"name": "people", "model": "extract", "entities": {"person": "a person"}},
            {"name": "summary", "model": "summarize", "instructions": "One sentence."},
            {
                "name": "topic",
                "model": "classify",
                "labels": [{"name": "billing", "rubric": "Money?"}, {"name": "other"}],
                "system_prompt": "Be terse.",
            },
        ]
    )
    assert [e.spec_hash() for e in enrichments] == HASHES
    assert json.loads(json.dumps([e.model_dump(mode="json") for e in enrichments]))[2] == {
        "name": "topic",
        "labels": [{"name": "billing", "rubric": "Money?"}, {"name": "other", "rubric": ""}],
        "system_prompt": "Be terse.",
        "model": "classify",
    }


# Computed by the version before the registry.
HASHES = ["80e38de49628eaad", "8f478ee582740287", "568e82ef25b4904c"]
