"""The batch engine inside the flow: a dead API, a crash mid-submission, what Prefect shows,
and what a run costs on object storage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.batch import ApiUnreachableError
from tasks.state import state_folder
from tests.conftest import free_port
from tests.flows.conftest import ENRICHMENTS, FLOW_TEST_KEY
from tests.flows.fault_proxy import LoopbackProxy
from tests.flows.test_resume import ROOT, output_ids, wait_for


def ledger_shards(destination: str) -> dict[str, dict]:
    path = Path(state_folder(destination)) / "gen-000001" / "ledger.json"
    try:
        return json.loads(path.read_text())["shards"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_an_api_url_with_nothing_listening_fails_within_a_minute(
    run_flow, corpus, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    destination = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(ApiUnreachableError) as caught:
        run_flow(source=corpus(10), destination=str(destination), batch_api=dead)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert dead in message and "nothing was submitted" in message
    assert not (destination / "enriched.parquet").exists()


def test_a_crash_during_parallel_submissions_leaves_at_most_that_many_in_doubt(
    prefect_api: str, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    source = corpus(60)
    destination = str(tmp_path / "out")

    def slow_submits(method: str, path: str) -> float:
        return 2.0 if method == "POST" and path.startswith("/v1/batches") else 0.0

    job = tmp_path / "job.json"
    params = {
        "source": source,
        "destination": destination,
        "enrichments": ENRICHMENTS,
        "group_size": 20,
        "shard_size": 10,
        "max_in_flight": 6,
        "parallel_submissions": 3,
        "poll_interval_seconds": 0.05,
    }
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "BATCH_API_KEY": FLOW_TEST_KEY}
    command = [sys.executable, "-m", "flows.enrich", "--params", str(job)]
    with LoopbackProxy(emulator.base_url, delay=slow_submits) as proxy:
        job.write_text(json.dumps({**params, "batch_api": proxy.url}))
        first = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(
                lambda: (
                    sum(e["batch_id"] is None for e in ledger_shards(destination).values()) >= 2
                ),
                timeout=90,
                interval=0.01,
            )
            first.send_signal(signal.SIGKILL)
        finally:
            first.wait(timeout=30)
    in_doubt = {s for s, e in ledger_shards(destination).items() if e["batch_id"] is None}
    assert 2 <= len(in_doubt) <= 3

    job.write_text(json.dumps({**params, "batch_api": emulator.base_url}))
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads(rerun.stdout[rerun.stdout.index("{") :])
    assert set(report["shards_in_doubt"]) == in_doubt
    assert output_ids(destination) == Counter(pq.read_table(source).column("id").to_pylist())
    # 60 documents x 3 enrichments in shards of 10: 18 batches needed; only shards in doubt
    # may have been paid twice.
    created = emulator.stats()["batches_created"]
    assert 18 <= created <= 18 + len(in_doubt)


def test_a_good_run_shows_only_completed_task_states(
    prefect_api: str, run_flow, corpus, api, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    emulator = api(latency=0.5)
    destination = tmp_path / "out"
    run_flow(
        source=corpus(40),
        destination=str(destination),
        batch_api=emulator.base_url,
        group_size=10,
        max_in_flight=4,
        poll_interval_seconds=0.1,
    )
    metadata = pq.read_schema(destination / "enriched.parquet").metadata
    flow_run_id = metadata[b"batch_enrich.flow_run_id"].decode()

    async def states() -> dict[str, list[str]]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return {
                run.name: [s.name for s in await client.read_task_run_states(run.id)]
                for run in runs
            }

    # Task run states reach the server as events, recorded a moment after the flow returns:
    # wait until every task run's history has reached a final state before reading it.
    deadline = time.monotonic() + 30
    history = asyncio.run(states())
    while time.monotonic() < deadline and any(
        seen[-1] in ("Pending", "Running") for seen in history.values()
    ):
        time.sleep(0.5)
        history = asyncio.run(states())
    assert "run-batches" in {name.split("-")[0] + "-batches" for name in history if "run-" in name}
    assert any(name.startswith("prepare-group") for name in history)
    for name, seen in history.items():
        assert seen[-1] == "Completed", (name, seen)
        assert not {"Failed", "AwaitingRetry", "Retrying", "RolledBack", "Crashed"} & set(seen), (
            name,
            seen,
        )


def test_object_store_requests_are_about_one_per_batch(
    run_flow, corpus, api, s3_bucket: str, moto_server: str, monkeypatch
) -> None:
    emulator = api(latency=0.2, workers=2)
    destination = f"s3://{s3_bucket}/enriched"
    with LoopbackProxy(moto_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        report = run_flow(
            source=corpus(300),
            destination=destination,
            batch_api=emulator.base_url,
            shard_size=10,
            group_size=100,
            max_in_flight=16,
            poll_interval_seconds=0.05,
        )
        requests = proxy.total_requests
    batches = report.batches_submitted
    assert batches == 90  # 300 documents x 3 enrichments, 10 lines per batch
    ledger = sum(n for path, n in proxy.paths.items() if path.endswith("/ledger.json"))
    # The ledger: an intent before each POST, its batch id written with the next intent.
    assert ledger <= batches
    # Everything the run asked of S3 (lock, generation, ledger, group results, the output and
    # its commit): about one request per batch; a run of this size pays ~30 fixed requests.
    assert requests / batches <= 1.3, (requests, dict(proxy.requests))
