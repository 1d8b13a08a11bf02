"""Request lines and shards: content-addressed ids, limits, and lines that cannot be sent."""

from __future__ import annotations

import json

import pyarrow as pa

from batchapi.client import validate_lines
from batchapi.models import BatchLimits
from tasks.shard import (
    EMPTY_TEXT_ERROR,
    build_group_lines,
    custom_id_for,
    set_aside_oversized,
    split_into_shards,
)
from tasks.spec import parse_enrichments

ENRICHMENTS = parse_enrichments(
    [
        {"name": "a_very_long_enrichment_name_for_people", "model": "extract",
         "entities": {"person": "a person"}},
        {"name": "summary", "model": "summarize", "instructions": "One sentence."},
        {"name": "topic", "model": "classify", "labels": [{"name": "x", "rubric": "Is it x?"}]},
    ]
)  # fmt: skip


def group(texts: list[str | None], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"id-{i}" for i in range(len(texts))]
    return pa.table({"id": ids, "text": pa.array(texts, pa.string())})


def test_custom_ids_are_short_unique_and_content_addressed() -> None:
    long_id = "x" * 500
    lines = build_group_lines(
        group(["one", "two", "one"], [long_id, "b", "c"]), 0, ENRICHMENTS, "id", "text"
    )
    ids = lines.lines.column("custom_id").to_pylist()
    assert len(ids) == 9 == len(set(ids))
    assert all(len(c) <= 64 for c in ids)
    again = build_group_lines(
        group(["one", "two", "one"], [long_id, "b", "c"]), 0, ENRICHMENTS, "id", "text"
    )
    assert again.lines.equals(lines.lines) and again.key == lines.key
    changed = build_group_lines(
        group(["one!", "two", "one"], [long_id, "b", "c"]), 0, ENRICHMENTS, "id", "text"
    )
    assert changed.key != lines.key
    assert custom_id_for(long_id, ENRICHMENTS[1], "one") in ids
    assert custom_id_for(long_id, ENRICHMENTS[1], "one!") not in ids


def test_group_ids_are_the_ids_of_each_document_and_enrichment() -> None:
    # The group builder hashes each text once for all enrichments; the ids must stay those
    # of custom_id_for, which earlier runs' ledgers and results are keyed on.
    texts = ["Grüße aus Köln", "", None, "same", "same", "x" * 5000]
    ids = ["ü-1", "b", "c", "d", "e", "f"]
    lines = build_group_lines(group(texts, ids), 0, ENRICHMENTS, "id", "text")
    expected = [
        custom_id_for(doc_id, enrichment, text or "")
        for doc_id, text in zip(ids, texts, strict=True)
        for enrichment in ENRICHMENTS
    ]
    assert lines.lines.column("custom_id").to_pylist() == expected
    assert len(set(expected)) == len(expected)


def test_request_lines_follow_the_wire_format() -> None:
    lines = build_group_lines(group(["Hello Mr Smith."]), 0, ENRICHMENTS, "id", "text")
    parsed = validate_lines([json.loads(r) for r in lines.requests.values()])
    assert [line.body.model for line in parsed] == ["extract", "summarize", "classify"]
    assert all(line.body.text == "Hello Mr Smith." for line in parsed)
    assert parsed[1].body.instructions == "One sentence."


def test_empty_and_null_text_are_not_sent() -> None:
    lines = build_group_lines(group(["text", "", None, "   "]), 0, ENRICHMENTS, "id", "text")
    assert len(lines.requests) == 3
    assert len(lines.known) == 9
    assert {row["error"] for row in lines.known.values()} == {EMPTY_TEXT_ERROR}
    assert lines.lines.num_rows == 12


def test_shards_respect_line_and_byte_limits() -> None:
    lines = build_group_lines(
        group([f"document number {i}" for i in range(40)]), 3, ENRICHMENTS, "id", "text"
    )
    pending = list(lines.requests)
    by_lines = split_into_shards(pending, lines.requests, 3, 1, BatchLimits(max_lines=50))
    assert [len(s.custom_ids) for s in by_lines] == [50, 50, 20]
    limit = BatchLimits(max_lines=50, max_bytes=2_000)
    by_bytes = split_into_shards(pending, lines.requests, 3, 1, limit)
    assert all(s.nbytes <= 2_000 for s in by_bytes)
    assert sum(len(s.custom_ids) for s in by_bytes) == 120
    assert [c for s in by_bytes for c in s.custom_ids] == pending
    # Same lines, same shard ids; another attempt, other ids.
    assert [s.shard_id for s in split_into_shards(pending, lines.requests, 3, 1, limit)] == [
        s.shard_id for s in by_bytes
    ]
    retry_ids = {s.shard_id for s in split_into_shards(pending, lines.requests, 3, 2, limit)}
    assert retry_ids.isdisjoint(s.shard_id for s in by_bytes)


def test_a_line_over_the_byte_limit_gets_an_error_instead_of_failing_the_run() -> None:
    lines = build_group_lines(group(["short", "long " * 1000]), 0, ENRICHMENTS[1:2], "id", "text")
    pending = set_aside_oversized(lines, list(lines.requests), BatchLimits(max_bytes=2_000))
    assert len(pending) == 1
    (error,) = lines.known.values()
    assert error["error_code"] == "too_large" and "2000-byte batch limit" in error["error"]
