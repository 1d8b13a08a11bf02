"""The emulator's deterministic heuristic engine (no model weights: results are heuristic).

Interface used by the emulator server and the benchmarks:
    run(body) -> the domain result of the body's model (`ENGINES[body.model]`)

Same input, same output: no randomness, no network, no state between calls beyond caches.
How each model works is described in docs/engine.md.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from batchapi.emulator.engine_extract import Document
from batchapi.emulator.engine_labels import label_keywords, resolve_kind
from batchapi.emulator.engine_text import (
    WORD_RE,
    aligned_lower,
    content_stem_of,
    content_stems,
    sentence_spans,
    stem_set,
    word_set,
)
from batchapi.models import (
    CHARS_PER_TOKEN,
    MODELS,
    AnyBody,
    ClassifyBody,
    ClassifyResult,
    DomainResult,
    ExtractBody,
    ExtractResult,
    LabelScore,
    SummarizeBody,
    SummarizeResult,
)

CONTEXT_CHARS = 40

# --------------------------------------------------------------------------- extract


def extract(body: ExtractBody) -> ExtractResult:
    """Entities for each requested label, in request order, by confidence within a label.

    `body.instruction` is not used: it cannot be tied to one label reliably.
    """
    text = body.text
    document = Document(text)
    entities: list[dict[str, Any]] = []
    for label, description in body.entities.items():
        kind = resolve_kind(label, description)
        if kind is not None:
            spans = document.find(kind)
        else:
            spans = document.keyword_spans(label_keywords(label, description))
        best: dict[tuple[int, int], float] = {}
        for span in spans:
            key = (span.start, span.end)
            if span.end > span.start and span.confidence > best.get(key, -1.0):
                best[key] = span.confidence
        for (start, end), confidence in sorted(best.items(), key=_by_confidence):
            entities.append(
                {
                    "text": text[start:end],
                    "type": label,
                    "confidence": confidence,
                    "start": start,
                    "end": end,
                    "context": text[max(0, start - CONTEXT_CHARS) : end + CONTEXT_CHARS],
                }
            )
    # Validating plain dicts in one call is about twice as fast as building Entity objects.
    return ExtractResult.model_validate({"entities": entities, "structured_result": None})


def _by_confidence(item: tuple[tuple[int, int], float]) -> tuple[float, int, int]:
    (start, end), confidence = item
    return (-confidence, start, end)


# --------------------------------------------------------------------------- summarize

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "single": 1,
}
_COUNT_RE = re.compile(
    r"(?<!\w)(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|single)"
    r"[\s-]+(?:[a-z]+[\s-]+)?(?:sentences?|bullets?|bullet[\s-]points?|points?|lines?)(?!\w)",
    re.IGNORECASE,
)
_BULLETS_RE = re.compile(r"bullet|bulleted|\blist\b", re.IGNORECASE)
_DEFAULT_SENTENCES = 3
_DEFAULT_FRACTION = 0.2
_LEAD_BIAS = 0.1
_SPACE_RE = re.compile(r"\s+")


def _requested_count(instructions: str) -> int | None:
    for match in _COUNT_RE.finditer(instructions):
        word = match.group(1).lower()
        count = int(word) if word.isdigit() else _NUMBER_WORDS[word]
        if count >= 1:
            return count
    return None


def _centrality(text: str, spans: list[tuple[int, int]]) -> list[float]:
    """TF-IDF cosine of each sentence to the document centroid, plus a mild lead bias.

    Sentences rarely repeat a word, so term frequency within a sentence is taken as 0/1. Then
    a term's centroid weight is df * idf, and each cosine is two sums over the sentence's terms.
    """
    lowered = aligned_lower(text)
    bags = [stem_set(lowered, start, end) for start, end in spans]
    total = len(spans)
    frequency: Counter[str] = Counter()
    for bag in bags:
        frequency.update(bag)
    idf_squared: dict[str, float] = {}
    centroid: dict[str, float] = {}
    for term, df in frequency.items():
        idf = math.log((1 + total) / (1 + df)) + 1.0
        idf_squared[term] = idf * idf
        centroid[term] = df * idf
    centroid_norm = math.sqrt(sum(w * w for w in centroid.values())) or 1.0
    scores = []
    for index, bag in enumerate(bags):
        norm = math.sqrt(sum(map(idf_squared.__getitem__, bag)))
        dot = sum(idf_squared[t] * frequency[t] for t in bag)
        cosine = dot / (norm * centroid_norm) if norm else 0.0
        scores.append(cosine + _LEAD_BIAS * (1.0 - index / total))
    return scores


def _truncate(sentence: str, budget: int) -> str:
    if len(sentence) <= budget:
        return sentence
    cut = sentence[: budget - 1]
    space = cut.rfind(" ")
    if space > 0:
        cut = cut[:space]
    cut = cut.rstrip(" ,;:-\u2013\u2014")
    return (cut or sentence[: budget - 1]) + "…"


def summarize(body: SummarizeBody) -> SummarizeResult:
    """An extractive summary: the most central sentences, in their original order."""
    text = body.text
    budget = body.max_tokens * CHARS_PER_TOKEN
    instructions = body.instructions or ""
    bullets = bool(_BULLETS_RE.search(instructions))
    prefix, joiner = ("- ", "\n") if bullets else ("", " ")

    spans = sentence_spans(text) or [(0, len(text))]
    sentences = [text[start:end] for start, end in spans]
    wanted = _requested_count(instructions)
    if wanted is None:
        wanted = min(_DEFAULT_SENTENCES, max(1, math.ceil(len(sentences) * _DEFAULT_FRACTION)))

    scores = _centrality(text, spans) if len(spans) > 1 else [1.0]
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    # The most central sentence always leads; if it alone is over budget it is cut short.
    # Later picks that do not fit are skipped in favour of shorter, less central ones.
    best = _SPACE_RE.sub(" ", sentences[ranked[0]])
    if len(prefix) + len(best) > budget:
        summary = prefix + _truncate(best, budget - len(prefix))
        if len(summary) > budget:  # a budget smaller than the bullet prefix itself
            summary = _truncate(best, budget)
        return SummarizeResult(summary=summary, input_chars=len(text), output_chars=len(summary))
    chosen = {ranked[0]: best}
    used = len(prefix) + len(best)
    for index in ranked[1:]:
        if len(chosen) >= wanted:
            break
        sentence = _SPACE_RE.sub(" ", sentences[index])
        cost = len(joiner) + len(prefix) + len(sentence)
        if used + cost <= budget:
            chosen[index] = sentence
            used += cost
    summary = joiner.join(prefix + chosen[i] for i in sorted(chosen))
    return SummarizeResult(summary=summary, input_chars=len(text), output_chars=len(summary))


# --------------------------------------------------------------------------- classify

# Rubrics are questions ("Does the text mention a refund?"): their framing words are noise.
_RUBRIC_STOPWORDS = word_set("""
    text document message email content mention mentions mentioned discuss discusses discussed
    relate relates related regarding concern concerns concerning talk talks describe describes
    refer refers contain contains include includes includes apply applies label category
    whether something anything someone anyone
    """)
_NAME_WEIGHT = 3.0
_RUBRIC_WEIGHT = 1.0
_SMOOTHING = 0.05
_EVIDENCE_SHOWN = 6


def _label_terms(name: str, rubric: str) -> dict[str, float]:
    """Stem -> weight; a stem in both the name and the rubric keeps the name's weight."""
    terms = {t: _RUBRIC_WEIGHT for t in content_stems(rubric, _RUBRIC_STOPWORDS)}
    name_words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    for term in content_stems(name_words.replace("_", " ")):
        terms[term] = _NAME_WEIGHT
    return terms


def _quoted(words: list[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def classify(body: ClassifyBody) -> ClassifyResult:
    """Lexical label scoring: overlap of the text's word stems with each label's name and rubric.

    `body.system_prompt` is not used: it tends to describe the task for every label alike.
    """
    words = WORD_RE.findall(body.text.lower())
    stems = list(map(content_stem_of, words))
    counts = Counter(stems)

    label_terms = [_label_terms(label.name, label.rubric) for label in body.labels]
    # A word in every label's vocabulary cannot tell labels apart, so it counts for less.
    shared: Counter[str] = Counter()
    for terms in label_terms:
        shared.update(terms.keys())

    raw: list[float] = []
    evidence: list[tuple[list[str], list[str]]] = []
    for terms in label_terms:
        total_weight = sum(terms.values()) or 1.0
        score = 0.0
        from_name: list[tuple[float, str]] = []
        from_rubric: list[tuple[float, str]] = []
        for term, weight in terms.items():
            count = counts.get(term, 0)
            if not count:
                continue
            contribution = weight * (1.0 + math.log(count)) / shared[term]
            score += contribution
            bucket = from_name if weight == _NAME_WEIGHT else from_rubric
            bucket.append((-contribution, term))
        raw.append(score / math.sqrt(total_weight))
        evidence.append(
            (
                [w for _, w in sorted(from_name)[:_EVIDENCE_SHOWN]],
                [w for _, w in sorted(from_rubric)[:_EVIDENCE_SHOWN]],
            )
        )

    smoothed = [r + _SMOOTHING for r in raw]
    total = sum(smoothed)
    probabilities = [s / total for s in smoothed]
    top = max(range(len(probabilities)), key=lambda i: (probabilities[i], -i))
    from_name, from_rubric = evidence[top]
    surface = _surface_forms(words, stems, {*from_name, *from_rubric})
    names = [label.name for label in body.labels]
    scores = dict(zip(names, probabilities, strict=True))
    return ClassifyResult(
        top_label=names[top],
        scores=scores,
        reasoning=_reasoning(
            names[top],
            probabilities[top],
            [surface[t] for t in from_name],
            [surface[t] for t in from_rubric],
        ),
        labels=[
            LabelScore(label=label.name, score=p, rubric=label.rubric)
            for label, p in zip(body.labels, probabilities, strict=True)
        ],
    )


def _surface_forms(words: list[str], stems: list[str], wanted: set[str]) -> dict[str, str]:
    """The first word of the text behind each wanted stem, for a readable reasoning."""
    surface: dict[str, str] = {}
    if wanted:
        for word, term in zip(words, stems, strict=True):
            if term in wanted and term not in surface:
                surface[term] = word
    return surface


def _reasoning(name: str, probability: float, from_name: list[str], from_rubric: list[str]) -> str:
    if not from_name and not from_rubric:
        return (
            f"{name}: no word of any label's name or rubric occurs in the text, so every label "
            f"scored alike and the first was chosen (heuristic word overlap, score "
            f"{probability:.2f})."
        )
    parts = []
    if from_name:
        parts.append(f"{_quoted(from_name)} from its name")
    if from_rubric:
        parts.append(f"{_quoted(from_rubric)} from its rubric")
    return (
        f"{name}: matched {' and '.join(parts)} (heuristic word overlap, score {probability:.2f})."
    )


# --------------------------------------------------------------------------- dispatch


# One engine per model of the API, by name.
ENGINES: dict[str, Callable[[Any], BaseModel]] = {
    "extract": extract,
    "summarize": summarize,
    "classify": classify,
}
assert tuple(ENGINES) == MODELS, "an engine for every model"


def run(body: AnyBody) -> DomainResult:
    return ENGINES[body.model](body)  # type: ignore[return-value]
