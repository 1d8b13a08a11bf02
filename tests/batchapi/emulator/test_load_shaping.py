"""Load shaping for benchmarks: the cap on open batches and the seeded latency jitter."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from batchapi.client import BatchApiClient, TransientApiError
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.process import emulator_process
from batchapi.emulator.runner import RunningEmulator
from batchapi.emulator.timing import in_progress_seconds
from tests.batchapi.emulator.test_app import client_for, summarize_line
from tests.batchapi.helpers import wait_for
from tests.conftest import TEST_API_KEY

Factory = Callable[..., RunningEmulator]


def submit_one(client: httpx.Client, custom_id: str) -> httpx.Response:
    return client.post("/v1/batches", content=summarize_line(custom_id).to_json())


# --------------------------------------------------------------------------- open-batch cap


@pytest.mark.parametrize("revision", ["A", "B"])
def test_open_batch_cap_answers_429_with_retry_after(
    emulator_factory: Factory, revision: str
) -> None:
    # A long latency keeps the accepted batches open for the whole test.
    emulator = emulator_factory(revision=revision, max_open_batches=2, latency=60)
    with client_for(emulator) as client:
        accepted = [submit_one(client, f"s{i}") for i in range(2)]
        assert [response.status_code for response in accepted] == [200, 200]
        refused = submit_one(client, "s2")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        detail = refused.json()["detail"]
        assert "2 batches are open; the limit is 2" in detail
        assert "Nothing in this request was queued" in detail
        # Polling and other endpoints are not capped.
        batch_key = "batch_id" if revision == "A" else "id"
        assert client.get(f"/v1/batches/{accepted[0].json()[batch_key]}").status_code == 200
    stats = emulator.stats()
    assert stats["batches_created"] == 2
    assert stats["batches_open"] == 2
    assert stats["rejected_open_cap"] == 1
    assert stats["lines_received"] == 2


def test_open_batch_cap_frees_a_place_when_a_batch_completes(emulator_factory: Factory) -> None:
    emulator = emulator_factory(max_open_batches=1, latency=2.0, open_cap_retry_after=3)
    with client_for(emulator) as client:
        first = submit_one(client, "s0")
        assert first.status_code == 200
        refused = submit_one(client, "s1")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        batch_id = first.json()["id"]
        wait_for(lambda: client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed")
        assert submit_one(client, "s1").status_code == 200
    stats = emulator.stats()
    assert (stats["batches_created"], stats["rejected_open_cap"]) == (2, 1)


def test_concurrent_submissions_never_overshoot_the_cap(emulator_factory: Factory) -> None:
    emulator = emulator_factory(max_open_batches=3, latency=60)
    with client_for(emulator) as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: submit_one(client, f"c{i}").status_code, range(12)))
    assert Counter(statuses) == {200: 3, 429: 9}
    stats = emulator.stats()
    assert (stats["batches_created"], stats["rejected_open_cap"]) == (3, 9)


def test_no_cap_by_default(emulator_factory: Factory) -> None:
    emulator = emulator_factory(latency=60)
    with client_for(emulator) as client:
        assert {submit_one(client, f"s{i}").status_code for i in range(6)} == {200}
    assert emulator.stats()["rejected_open_cap"] == 0


def test_client_sees_the_cap_as_a_transient_429(emulator_factory: Factory) -> None:
    emulator = emulator_factory(max_open_batches=1, latency=60)
    with BatchApiClient(emulator.base_url, TEST_API_KEY, max_retries=0) as api:
        api.submit([summarize_line("s0")])
        with pytest.raises(TransientApiError) as caught:
            api.submit([summarize_line("s1")])
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 1.0


def test_cli_flags_cap_and_revision() -> None:
    args = ["--revision", "A", "--max-open-batches", "1", "--latency", "60"]
    with (
        emulator_process(api_key=TEST_API_KEY, extra_args=args) as emulator,
        httpx.Client(base_url=emulator.base_url, headers={"x-api-key": TEST_API_KEY}) as client,
    ):
        first = submit_one(client, "s0")
        assert first.status_code == 200
        assert first.json()["batch_id"].startswith("batch-")
        assert submit_one(client, "s1").status_code == 429
        stats = emulator.stats()
    assert (stats["batches_created"], stats["rejected_open_cap"]) == (1, 1)


# --------------------------------------------------------------------------- latency jitter


def times(config: EmulatorConfig, n: int = 2_000) -> list[float]:
    return [in_progress_seconds(config, seq) for seq in range(1, n + 1)]


def test_without_jitter_every_batch_takes_the_latency() -> None:
    assert set(times(EmulatorConfig(latency=2.0), 50)) == {2.0}
    assert set(times(EmulatorConfig(latency=0.0, latency_jitter=1.0), 50)) == {0.0}


def test_jitter_is_deterministic_per_seed() -> None:
    config = EmulatorConfig(latency=2.0, latency_jitter=0.6, seed=11)
    same = EmulatorConfig(latency=2.0, latency_jitter=0.6, seed=11)
    assert times(config, 300) == times(same, 300)
    assert times(config, 300) != times(config.model_copy(update={"seed": 12}), 300)


def test_jitter_keeps_the_median_and_has_a_straggler_tail() -> None:
    config = EmulatorConfig(latency=2.0, latency_jitter=0.5, seed=3)
    sample = times(config)
    median = statistics.median(sample)
    assert median == pytest.approx(2.0, rel=0.15)
    assert len(set(sample)) == len(sample)  # spread, not a constant
    tail = sum(value > 4 * median for value in sample) / len(sample)
    # Lognormal with sigma 0.5 alone almost never exceeds 4x its median (0.3%); the 5%
    # stragglers at 5x do about half the time.
    assert 0.015 < tail < 0.08
    assert max(sample) > 6 * median
    no_stragglers = times(config.model_copy(update={"straggler_share": 0.0}))
    assert sum(value > 4 * median for value in no_stragglers) / len(sample) < 0.01


def test_the_worker_counts_each_batch_jittered_time_from_its_acceptance(
    emulator_factory: Factory,
) -> None:
    emulator = emulator_factory(latency=500, latency_jitter=1.0, seed=4)
    accepted: dict[str, tuple[float, float]] = {}
    with client_for(emulator) as client:
        for i in range(4):
            before = time.time()
            batch_id = submit_one(client, f"s{i}").json()["id"]
            accepted[batch_id] = (before, time.time())

        def processed() -> bool:
            return all(emulator.store.get(batch_id).status.is_terminal for batch_id in accepted)

        wait_for(processed)
        shown = {client.get(f"/v1/batches/{b}").json()["status"] for b in accepted}
    assert shown == {"in_progress"}
    spans = []
    for batch_id, (before, after) in accepted.items():
        stored = emulator.store.get(batch_id)
        assert stored.started_at is not None and stored.visible_at is not None
        expected = in_progress_seconds(emulator.config, stored.seq)
        # From the moment the POST was accepted, not from when the worker picked it up.
        assert before + expected <= stored.visible_at <= after + expected
        spans.append(expected)
    assert len(set(spans)) == 4
