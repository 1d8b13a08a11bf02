"""The emulator's deterministic heuristic engine (no model weights: results are heuristic).

Interface used by the emulator server and the benchmarks:
    run(body) -> ExtractResult | SummarizeResult | ClassifyResult
"""

from __future__ import annotations

from batchapi.models import (
    ClassifyBody,
    ClassifyResult,
    DomainResult,
    ExtractBody,
    ExtractResult,
    SummarizeBody,
    SummarizeResult,
)


def extract(body: ExtractBody) -> ExtractResult:
    raise NotImplementedError


def summarize(body: SummarizeBody) -> SummarizeResult:
    raise NotImplementedError


def classify(body: ClassifyBody) -> ClassifyResult:
    raise NotImplementedError


def run(body: ExtractBody | SummarizeBody | ClassifyBody) -> DomainResult:
    if isinstance(body, ExtractBody):
        return extract(body)
    if isinstance(body, SummarizeBody):
        return summarize(body)
    return classify(body)
