"""Fixtures for flow tests: a source corpus, emulators reachable over HTTP, the Prefect API."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchapi.emulator.runner import RunningEmulator

FLOW_TEST_KEY = "flow-test-key-6f1c"

ENRICHMENTS: list[dict[str, Any]] = [
    {
        "name": "people",
        "model": "extract",
        "entities": {"person": "a person's name", "org": "a company", "email": "an email"},
    },
    {"name": "summary", "model": "summarize", "instructions": "One sentence.", "max_tokens": 60},
    {
        "name": "topic",
        "model": "classify",
        "labels": [
            {"name": "billing", "rubric": "Is it about a payment, charge, invoice or refund?"},
            {"name": "shipping", "rubric": "Is it about a delivery, parcel or shipment?"},
        ],
    },
]

_TEMPLATES = [
    "Dr. {name} from Acme Inc. wrote to billing@acme.com asking for a refund of ${amount} "
    "charged twice on 12 March 2025. Please reverse the duplicate payment.",
    "The parcel for {name} left our Berlin warehouse on 3 April 2025 but the shipment has "
    "not been delivered. Tracking shows the delivery is delayed by {amount} days.",
    "Ms {name} of Globex Ltd reports that the invoice of EUR {amount} is wrong. The charge "
    "does not match the order. She expects a corrected invoice this week.",
]


def make_documents(n: int, start: int = 0) -> pa.Table:
    names = ["Alice Martin", "Bob Chen", "Carla Diaz", "Dmitri Ivanov", "Emma Stone"]
    rows = [
        {
            "id": f"doc-{i:05d}",
            "text": _TEMPLATES[i % 3].format(name=names[i % 5], amount=10 + i),
            "score": float(i),
        }
        for i in range(start, start + n)
    ]
    return pa.Table.from_pylist(rows)


@pytest.fixture
def corpus(tmp_path: Path) -> Callable[..., str]:
    """`corpus(n)` writes n documents to a Parquet file and returns its path."""

    def write(n: int = 30, table: pa.Table | None = None, name: str = "docs.parquet") -> str:
        path = tmp_path / "source" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table if table is not None else make_documents(n), path)
        return str(path)

    return write


@pytest.fixture
def api(
    emulator_factory: Callable[..., RunningEmulator], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., RunningEmulator]:
    """`api(**emulator_config)` starts an emulator and points BATCH_API_KEY at its key.

    The flow then reaches it as `batch_api=emulator.base_url`, over real HTTP.
    """
    monkeypatch.setenv("BATCH_API_KEY", FLOW_TEST_KEY)
    return functools.partial(emulator_factory, api_key=FLOW_TEST_KEY)


@pytest.fixture
def run_flow(prefect_api: str) -> Callable[..., Any]:
    """Call the flow with test defaults (fast polling)."""
    from flows.enrich import enrich_documents

    def run(**params: Any) -> Any:
        params.setdefault("enrichments", ENRICHMENTS)
        params.setdefault("poll_interval_seconds", 0.05)
        return enrich_documents(**params)

    return run
