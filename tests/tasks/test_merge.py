"""Merging results into documents: matched on custom_id, every row once, typed columns."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from tasks.merge import merge_group, output_schema, results_for
from tasks.shard import build_group_lines
from tasks.spec import parse_enrichments
from tasks.state import results_table

ENRICHMENTS = parse_enrichments(
    [
        {"name": "people", "model": "extract", "entities": {"person": "a person"}},
        {"name": "summary", "model": "summarize"},
        {"name": "topic", "model": "classify",
         "labels": [{"name": "billing", "rubric": "?"}, {"name": "other", "rubric": "?"}]},
    ]
)  # fmt: skip
RESULTS = {
    "people": lambda i: {
        "entities": [
            {"text": f"P{i}", "type": "person", "confidence": 0.9, "start": 0, "end": 2,
             "context": "ignored"}
        ],
        "structured_result": None,
    },
    "summary": lambda i: {"summary": f"summary {i}", "input_chars": 9, "output_chars": 9},
    "topic": lambda i: {"top_label": "billing", "scores": {"billing": 0.75, "other": 0.25},
                        "reasoning": "r"},
}  # fmt: skip


def setup(n: int) -> tuple[pa.Table, object]:
    group = pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"P{i} text" for i in range(n)]})
    return group, build_group_lines(group, 0, ENRICHMENTS, "id", "text")


def rows_for(lines, fail: set[int]) -> list[dict]:
    ids = lines.lines.column("custom_id").to_pylist()
    docs = lines.lines.column("row").to_pylist()
    names = lines.lines.column("enrichment").to_pylist()
    rows = []
    for custom_id, row, name in zip(ids, docs, names, strict=True):
        failed = row in fail and name == "summary"
        rows.append(
            {
                "custom_id": custom_id,
                "result": None if failed else json.dumps(RESULTS[name](row)),
                "error": "boom" if failed else None,
                "error_code": "server_error" if failed else None,
                "attempts": 1,
            }
        )
    return rows


def test_results_are_matched_on_custom_id_not_order() -> None:
    group, lines = setup(7)
    rows = rows_for(lines, fail={2, 5})
    random.Random(3).shuffle(rows)
    schema = output_schema(group.schema, ENRICHMENTS, {"k": "v"})
    out = merge_group.fn(
        group, lines, results_for(lines, [results_table(rows)]), ENRICHMENTS, schema
    )
    assert out.schema.equals(schema, check_metadata=False)
    assert out.column("id").to_pylist() == group.column("id").to_pylist()
    for i, row in enumerate(out.to_pylist()):
        assert row["people"] == [
            {"text": f"P{i}", "type": "person", "confidence": 0.9, "start": 0, "end": 2}
        ]
        assert row["topic"] == "billing" and dict(row["topic_scores"]) == {
            "billing": 0.75,
            "other": 0.25,
        }
        if i in (2, 5):
            assert row["summary"] is None and row["summary_error"] == "boom"
        else:
            assert row["summary"] == f"summary {i}" and row["summary_error"] is None


def test_the_latest_attempt_wins_and_a_missing_result_is_an_error() -> None:
    group, lines = setup(3)
    first = rows_for(lines, fail={0, 1})
    retry = [r for r in rows_for(lines, fail={1}) if r["custom_id"] in {
        f["custom_id"] for f in first if f["error"]}]  # fmt: skip
    for r in retry:
        r["attempts"] = 2
    merged = results_for(lines, [results_table(first), results_table(retry)])
    assert merged.num_rows == 9
    schema = output_schema(group.schema, ENRICHMENTS, {})
    out = merge_group.fn(group, lines, merged, ENRICHMENTS, schema).to_pylist()
    assert out[0]["summary"] == "summary 0" and out[1]["summary_error"] == "boom"

    partial = results_table(rows_for(lines, fail=set())[:-1])
    out = merge_group.fn(group, lines, results_for(lines, [partial]), ENRICHMENTS, schema)
    assert out.column("topic_error").to_pylist()[-1] == "no result was recorded for this line"


def test_rows_not_covered_exactly_once_are_refused() -> None:
    group, lines = setup(2)
    schema = output_schema(group.schema, ENRICHMENTS, {})
    merged = results_for(lines, [results_table(rows_for(lines, set()))])
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_group.fn(group.slice(0, 1), lines, merged, ENRICHMENTS, schema)
