"""The enrichments parameter: clear errors before anything is sent."""

from __future__ import annotations

import pytest

from tasks.spec import EnrichmentSpecError, parse_enrichments, spec_hash

SUMMARY = {"name": "summary", "model": "summarize"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "non-empty list"),
        ([{"name": "x", "model": "translate"}], "unknown model 'translate'"),
        ([{"name": "t", "model": "classify", "labels": []}], "labels is empty"),
        ([{"name": "p", "model": "extract", "entities": {}}], "entities is empty"),
        ([{"name": "bad name", "model": "summarize"}], "enrichments[0]"),
        ([SUMMARY, SUMMARY], "unique"),
        ([{"name": "t", "model": "classify", "labels": [{"name": "a"}, {"name": "a"}]}], "unique"),
        (
            [{"name": "a_error", "model": "summarize"}, {"name": "a", "model": "summarize"}],
            "clashing",
        ),
    ],
)
def test_bad_enrichments_name_the_problem(raw: object, message: str) -> None:
    with pytest.raises(EnrichmentSpecError) as caught:
        parse_enrichments(raw)
    assert message in str(caught.value)


def test_spec_hash_changes_with_anything_that_changes_results() -> None:
    base = parse_enrichments([{**SUMMARY, "instructions": "One sentence."}])
    same = parse_enrichments([{**SUMMARY, "instructions": "One sentence."}])
    other = parse_enrichments([{**SUMMARY, "instructions": "Two sentences."}])
    assert spec_hash(base) == spec_hash(same) != spec_hash(other)
    assert parse_enrichments([{**SUMMARY}])[0].columns == ["summary", "summary_error"]
