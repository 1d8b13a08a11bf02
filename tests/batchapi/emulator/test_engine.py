"""The emulator's heuristic engine: offsets, recognizers, summaries and label scores."""

from __future__ import annotations

import re

import pytest

from batchapi.emulator import engine
from batchapi.emulator.engine_labels import resolve_kind
from batchapi.emulator.engine_text import sentence_spans, stem
from batchapi.models import (
    CHARS_PER_TOKEN,
    ClassifyBody,
    ClassifyResult,
    ExtractBody,
    ExtractResult,
    SummarizeBody,
    SummarizeResult,
)

ALL_LABELS = {
    "person": "a person's full name",
    "organization": "a company or organization",
    "location": "a city or country",
    "email": "an email address",
    "url": "a link",
    "phone": "a phone number",
    "date": "a calendar date",
    "money": "an amount of money",
    "percent": "a percentage",
    "product": "a product name such as a laptop or phone model",
}

LETTER = (
    "Dear Mr. Smith,\n\n"
    "On 12 March 2025 Dr. Jane Doe, CEO of Acme Widgets Inc., met Hans Müller of Siemens AG "
    "in Paris. Acme is headquartered in Springfield. Contact jane.doe@acme.com or visit "
    "https://acme.com/about (our site) or www.example.org. Call +1 (415) 555-2671. The invoice "
    "of $1,200.50 (EUR 300, or 300 euros) was due March 12, 2025 and again on 03/12/2025; "
    "margins rose 12.5% and 3 percent. She works at Globex and lives in São Paulo, Brazil. "
    "The new Dell XPS 13 laptop was shipped to Zoë Dubois at Initech Ltd.\n\n"
    "Kind regards,\nPeter Lang\n"
)

# Texts chosen to stress offsets: accents (composed and decomposed), "İ" whose lowercase is
# two characters, emoji, CJK, right-to-left script, CRLF and tabs.
VARIED_TEXTS = [
    LETTER,
    "İstanbul office: İlker Öztürk (ilker@örnek.com.tr) paid ₺1,500 and €2,000 on 2024-05-01.",
    "Jose\u0301 Garci\u0301a of Telefo\u0301nica S.A. visited Madrid on 3 May 2024 😀 for $5m.",
    "📦 Order shipped 🚚 to 東京 by Yamato Transport Co. Ltd on March 3, 2025 (tracking 1Z999).",
    "שלום עולם. Ms Sara Cohen from Tel Aviv wrote to sara@example.co.il about 15% off.\r\n"
    "\tSecond line with USD 40 and https://example.com/x?y=(1).",
    "ALL CAPS TEXT FROM ACME CORP ABOUT 100 DOLLARS AND 5 PERCENT",
    "no capitals here at all, just words and 42 numbers",
    "x",
    "...",
]


def _extract(text: str, entities: dict[str, str] | None = None) -> ExtractResult:
    return engine.extract(ExtractBody(text=text, entities=entities or ALL_LABELS))


def _found(result: ExtractResult, label: str) -> list[str]:
    return [e.text for e in result.entities if e.type == label]


# --------------------------------------------------------------------------- extract


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_entity_offsets_slice_the_text_exactly(text: str) -> None:
    result = _extract(text)
    keys = set()
    for entity in result.entities:
        assert entity.start is not None and entity.end is not None
        assert 0 <= entity.start < entity.end <= len(text)
        assert text[entity.start : entity.end] == entity.text
        assert 0.0 <= entity.confidence <= 1.0
        assert entity.context is not None and entity.text in entity.context
        key = (entity.type, entity.start, entity.end)
        assert key not in keys
        keys.add(key)
    assert result.structured_result is None


def test_entities_grouped_by_label_in_request_order_and_sorted_by_confidence() -> None:
    result = _extract(LETTER)
    types = [e.type for e in result.entities]
    order = [label for label in ALL_LABELS if label in types]
    assert [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t] == order
    for label in order:
        confidences = [e.confidence for e in result.entities if e.type == label]
        assert confidences == sorted(confidences, reverse=True)


def test_pattern_entities_are_found() -> None:
    result = _extract(LETTER)
    assert _found(result, "email") == ["jane.doe@acme.com"]
    assert set(_found(result, "url")) == {"https://acme.com/about", "www.example.org"}
    assert _found(result, "phone") == ["+1 (415) 555-2671"]
    assert set(_found(result, "date")) == {"12 March 2025", "March 12, 2025", "03/12/2025"}
    assert set(_found(result, "money")) == {"$1,200.50", "EUR 300", "300 euros"}
    assert set(_found(result, "percent")) == {"12.5%", "3 percent"}


def test_name_entities_are_found() -> None:
    result = _extract(LETTER)
    persons = set(_found(result, "person"))
    assert {"Smith", "Jane Doe", "Hans Müller", "Zoë Dubois", "Peter Lang"} <= persons
    assert not any(p.startswith(("Mr", "Dr")) for p in persons), "titles stay out of names"
    organizations = set(_found(result, "organization"))
    assert {"Acme Widgets Inc.", "Siemens AG", "Initech Ltd.", "Globex"} <= organizations
    locations = set(_found(result, "location"))
    assert {"Paris", "Springfield", "São Paulo", "Brazil"} <= locations
    assert not persons & organizations
    assert not persons & locations


def test_iso_dates_money_forms_and_dotted_legal_forms() -> None:
    text = (
        "Meridian Capital S.A. signed on 2024-10-18 for 581,029.48 USD, £49,559.73 and "
        "US$12 million; Mrs Ana Lopez of Bank of England agreed."
    )
    result = _extract(text)
    assert "2024-10-18" in _found(result, "date")
    assert {"581,029.48 USD", "£49,559.73", "US$12 million"} <= set(_found(result, "money"))
    organizations = _found(result, "organization")
    assert "Meridian Capital S.A." in organizations
    assert "Bank of England" in organizations
    assert "Ana Lopez" in _found(result, "person")


def test_numbers_that_are_not_phones_dates_or_money() -> None:
    text = "Version 3.5 shipped 1200 units in 2024; order 2024-88812 and the ratio 3/4 held."
    result = _extract(text)
    assert _found(result, "phone") == []
    assert _found(result, "money") == []
    assert _found(result, "date") == []


def test_verb_may_is_not_a_date() -> None:
    assert _found(_extract("You may 2 times retry, or in May 2024."), "date") == ["May 2024"]


@pytest.mark.parametrize(
    ("label", "description", "kind"),
    [
        ("customer", "the customer's full name", "person"),
        ("people", "", "person"),
        ("vendor", "the company selling the goods", "organization"),
        ("headquarters", "the city where the firm is based", "location"),
        ("contact_email", "the email address of the contact", "email"),
        ("website", "", "url"),
        ("deadline", "the due date", "date"),
        ("total", "the amount due in dollars", "money"),
        ("growthRate", "growth as a percentage", "percent"),
        ("product", "a product name such as a laptop or phone model", None),
        ("sku", "", None),
    ],
)
def test_labels_map_to_recognizers_by_name_and_description(
    label: str, description: str, kind: str | None
) -> None:
    assert resolve_kind(label, description) == kind


def test_label_type_is_the_requested_key_verbatim() -> None:
    result = _extract(LETTER, {"Customer Name": "the name of a person", "Cost$": "price"})
    assert {e.type for e in result.entities} == {"Customer Name", "Cost$"}
    assert "Jane Doe" in _found(result, "Customer Name")
    assert "$1,200.50" in _found(result, "Cost$")


def test_other_labels_find_mentions_of_their_words() -> None:
    result = _extract(LETTER, {"product": ALL_LABELS["product"]})
    assert _found(result, "product") == ["Dell XPS 13 laptop"]


def test_unknown_label_without_mentions_yields_nothing() -> None:
    result = _extract(LETTER, {"flux_capacitor": "a time travel component"})
    assert result.entities == []


def test_extract_is_deterministic() -> None:
    first = _extract(LETTER).model_dump()
    assert all(_extract(LETTER).model_dump() == first for _ in range(3))


# --------------------------------------------------------------------------- summarize

ARTICLE = (
    "Acme Corp. reported record revenue of $5 million in the third quarter. "
    "The weather in Paris was mild on Tuesday. "
    "Revenue growth was driven by strong demand for Acme's cloud products. "
    "Dr. Smith, the chief executive, said revenue and demand should keep growing next year. "
    "A cat was seen near the office. "
    "Analysts expect Acme revenue to grow again as cloud demand rises. "
    "The company will publish full results, e.g. margins and cash flow, in March."
)


def _summarize(text: str, instructions: str | None = None, max_tokens: int = 2000) -> str:
    result = engine.summarize(
        SummarizeBody(text=text, instructions=instructions, max_tokens=max_tokens)
    )
    assert isinstance(result, SummarizeResult)
    assert result.input_chars == len(text)
    assert result.output_chars == len(result.summary)
    assert result.summary.strip()
    return result.summary


def _sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def test_sentence_splitting_respects_abbreviations_and_initials() -> None:
    text = (
        "Dr. Smith met Mrs. Jones at 5 p.m. The meeting went well. Acme Inc. was there, "
        "e.g. John F. Kennedy. Prices rose 3.5% in the U.S. last year! Did they?"
    )
    assert _sentences(text) == [
        "Dr. Smith met Mrs. Jones at 5 p.m.",
        "The meeting went well.",
        "Acme Inc. was there, e.g. John F. Kennedy.",
        "Prices rose 3.5% in the U.S. last year!",
        "Did they?",
    ]
    assert _sentences("no punctuation at all here just words") == [
        "no punctuation at all here just words"
    ]
    assert _sentences("Report\nRevenue grew.\n\n- first point\n- second point") == [
        "Report",
        "Revenue grew.",
        "first point",
        "second point",
    ]


@pytest.mark.parametrize("max_tokens", [1, 3, 10, 25, 60, 2000])
def test_summary_fits_max_tokens(max_tokens: int) -> None:
    for instructions in (None, "bullet points", "one sentence"):
        summary = _summarize(ARTICLE, instructions, max_tokens)
        assert len(summary) <= max_tokens * CHARS_PER_TOKEN


def test_too_long_best_sentence_is_cut_on_a_word_boundary() -> None:
    summary = _summarize(ARTICLE, max_tokens=10)
    assert summary.endswith("…")
    words = set(re.findall(r"\w+", ARTICLE))
    assert all(word in words for word in re.findall(r"\w+", summary))


def test_requested_sentence_count_is_honoured() -> None:
    sentences = _sentences(ARTICLE)
    for instructions, wanted in (("2 sentences", 2), ("In two sentences.", 2), ("one", 1)):
        summary = _summarize(ARTICLE, instructions if instructions != "one" else "One sentence.")
        picked = [s for s in sentences if s in summary]
        assert len(picked) == wanted, instructions
        assert summary == " ".join(picked)


def test_default_summary_picks_central_sentences_in_original_order() -> None:
    summary = _summarize(ARTICLE)
    sentences = _sentences(ARTICLE)
    picked = [s for s in sentences if s in summary]
    assert len(picked) == 2  # 20% of 7 sentences, rounded up, capped at 3
    assert "cat" not in summary and "weather" not in summary
    positions = [ARTICLE.index(s) for s in picked]
    assert positions == sorted(positions)


def test_bullets_are_one_chosen_sentence_per_line() -> None:
    summary = _summarize(ARTICLE, "Summarise as 3 bullet points")
    lines = summary.split("\n")
    assert len(lines) == 3
    assert all(line.startswith("- ") for line in lines)
    positions = [ARTICLE.index(line[2:]) for line in lines]
    assert positions == sorted(positions)


@pytest.mark.parametrize("text", ["x", "...", "  ?  ", "Hello", "a\n\n\nb", "İ" * 50])
def test_summary_of_tiny_texts_is_never_empty(text: str) -> None:
    assert _summarize(text, max_tokens=5)


# --------------------------------------------------------------------------- classify

TOPICS = [
    {"name": "billing", "rubric": "Is it about a payment, invoice, charge or refund?"},
    {"name": "shipping", "rubric": "Is it about a delivery, parcel, courier or shipment?"},
    {"name": "account", "rubric": "Is it about a login, password or account access?"},
]


def _classify(text: str, labels: list[dict[str, str]] | None = None) -> ClassifyResult:
    result = engine.classify(ClassifyBody(text=text, labels=labels or TOPICS))
    assert abs(sum(result.scores.values()) - 1.0) < 1e-9
    assert all(score > 0 for score in result.scores.values())
    return result


def test_billing_text_is_billing_and_shipping_text_is_shipping() -> None:
    billing = _classify(
        "I was charged twice for my order and need a refund of the duplicate payments."
    )
    assert billing.top_label == "billing"
    assert billing.scores["billing"] > 2 * billing.scores["shipping"]
    shipping = _classify("The courier lost my parcel and the delivery is two weeks late.")
    assert shipping.top_label == "shipping"


def test_reasoning_names_the_evidence() -> None:
    result = _classify("Please refund the charge on invoice 42, the payment went through twice.")
    assert result.reasoning is not None
    assert result.reasoning.startswith("billing:")
    for word in ("refund", "charge", "invoice", "payment"):
        assert f"'{word}'" in result.reasoning


def test_labels_are_listed_in_request_order_with_rubrics() -> None:
    result = _classify("My password reset link does not work and I cannot log in.")
    assert result.top_label == "account"
    assert [entry.label for entry in result.labels or []] == ["billing", "shipping", "account"]
    assert [entry.rubric for entry in result.labels or []] == [t["rubric"] for t in TOPICS]
    assert list(result.scores) == ["billing", "shipping", "account"]
    assert all(result.scores[e.label] == e.score for e in result.labels or [])


def test_label_name_weighs_more_than_rubric_words() -> None:
    labels = [
        {"name": "refund", "rubric": "Is it about money?"},
        {"name": "other", "rubric": "Is it about a refund?"},
    ]
    assert _classify("A refund please.", labels).top_label == "refund"


def test_no_overlap_gives_equal_scores_and_the_first_label() -> None:
    result = _classify("Lorem ipsum dolor sit amet.")
    assert result.top_label == "billing"
    assert len(set(result.scores.values())) == 1
    assert result.reasoning and "no word" in result.reasoning


def test_stemmer_joins_inflections() -> None:
    assert stem("payments") == stem("payment") == stem("paying") == stem("paid") == "pay"
    assert stem("shipping") == stem("shipped") == stem("ships") == stem("shipment")
    assert stem("charges") == stem("charge") == stem("charged") == stem("charging")


def test_classify_is_deterministic() -> None:
    text = "The parcel was late and I was charged for express delivery."
    first = _classify(text).model_dump()
    assert all(_classify(text).model_dump() == first for _ in range(3))


# --------------------------------------------------------------------------- run


def test_run_dispatches_on_the_body_model() -> None:
    assert isinstance(engine.run(ExtractBody(text="x", entities={"a": "b"})), ExtractResult)
    assert isinstance(engine.run(SummarizeBody(text="x")), SummarizeResult)
    assert isinstance(engine.run(ClassifyBody(text="x", labels=TOPICS)), ClassifyResult)
