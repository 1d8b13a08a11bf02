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


LIST_SHAPE = [
    {"name": "people", "model": "extract", "entities": {"person": "a person"}},
    {"name": "summary", "model": "summarize", "instructions": "One sentence.", "max_tokens": 60},
    {"name": "topic", "model": "classify", "labels": [{"name": "billing", "rubric": "Money?"}]},
]
BY_MODEL = {
    "extract": [{"name": "people", "entities": {"person": "a person"}}],
    "summarize": [{"name": "summary", "instructions": "One sentence.", "max_tokens": 60}],
    "classify": [{"name": "topic", "labels": [{"name": "billing", "rubric": "Money?"}]}],
}


def test_one_list_per_model_reads_as_the_list_of_items() -> None:
    from tasks.spec import EnrichmentsByModel

    as_list = parse_enrichments(LIST_SHAPE)
    for shape in (BY_MODEL, EnrichmentsByModel.model_validate(BY_MODEL)):
        by_model = parse_enrichments(shape)
        assert [e.model_dump() for e in by_model] == [e.model_dump() for e in as_list]
        assert spec_hash(by_model) == spec_hash(as_list)
    assert [e.model for e in parse_enrichments({"summarize": BY_MODEL["summarize"]})] == [
        "summarize"
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "non-empty"),
        ({"extract": [], "summarize": []}, "non-empty"),
        ({"translate": [{"name": "x"}]}, "unknown model(s) ['translate']"),
        ({"summarize": [{"name": "s", "model": "classify"}]}, "move it to the 'classify' list"),
        ({"summarize": {"name": "s"}}, "enrichments.summarize must be a list"),
        ({"classify": [{"name": "t", "labels": []}]}, "enrichments.classify[0]: "),
        ({"extract": [{"name": "p", "entities": {}}]}, "entities is empty"),
    ],
)
def test_bad_lists_per_model_name_the_problem(raw: object, message: str) -> None:
    with pytest.raises(EnrichmentSpecError) as caught:
        parse_enrichments(raw)
    assert message in str(caught.value)


def test_blank_optional_fields_from_the_form_mean_not_set() -> None:
    blank = parse_enrichments(
        {
            "extract": [{"name": "p", "entities": {"person": "a person"}, "instruction": ""}],
            "summarize": [{"name": "s", "instructions": "  "}],
            "classify": [{"name": "t", "labels": [{"name": "a"}], "system_prompt": ""}],
        }
    )
    unset = parse_enrichments(
        {
            "extract": [{"name": "p", "entities": {"person": "a person"}}],
            "summarize": [{"name": "s"}],
            "classify": [{"name": "t", "labels": [{"name": "a"}]}],
        }
    )
    assert [e.spec_hash() for e in blank] == [e.spec_hash() for e in unset]
    assert blank[0].instruction is None and blank[1].instructions is None
    assert blank[2].system_prompt is None


def test_optional_numbers_take_blank_as_not_set_and_keep_their_bounds() -> None:
    from pydantic import TypeAdapter, ValidationError

    from tasks.spec import OptionalCount, OptionalSeconds

    count, seconds = TypeAdapter(OptionalCount), TypeAdapter(OptionalSeconds)
    assert count.validate_python(0) is None and count.validate_python(None) is None
    assert count.validate_python(7) == 7 and seconds.validate_python(0.5) == 0.5
    assert seconds.validate_python(0) is None
    for adapter, bad in ((count, -1), (seconds, -0.5), (count, "many")):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)
