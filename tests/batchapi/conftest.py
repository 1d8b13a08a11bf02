"""Fixtures shared by the batchapi tests: in-process emulators on free loopback ports."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from batchapi.emulator.runner import RunningEmulator
from batchapi.models import Batch
from tests.conftest import TEST_API_KEY  # noqa: F401 - re-exported for the tests here


@pytest.fixture
def emulator(emulator_factory: Callable[..., RunningEmulator]) -> RunningEmulator:
    """An emulator with api key "test-key" and default settings."""
    return emulator_factory()


@pytest.fixture
def wait_terminal() -> Callable[..., Batch]:
    """`wait_terminal(client, batch_id, timeout=10)` polls until the batch is terminal."""

    def wait(client: httpx.Client, batch_id: str, timeout: float = 10.0) -> Batch:
        deadline = time.monotonic() + timeout
        while True:
            response = client.get(f"/v1/batches/{batch_id}")
            response.raise_for_status()
            batch = Batch.model_validate(response.json())
            if batch.is_terminal:
                return batch
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")
            time.sleep(0.01)

    return wait
