"""Scale-out with real processes on loopback: the flow's groups on a running Dask cluster
(`dask_address`), and `enrich-partitioned` fanning a night out over a process work pool of two
Prefect workers into one Delta commit, including a worker killed mid-run and the parent rerun.

One Prefect server (tests/prefect_server.py, shared with the other server tests), one Dask
cluster and one work pool serve every test here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from deployments.local import Emulator, PrefectServer, start_emulator
from flows.runners import TaskRunnerError
from tasks.state import state_folder
from tests.flows.conftest import ENRICHMENTS, FLOW_TEST_KEY, make_documents
from tests.flows.scale_out import (
    DEPLOYMENT,
    REPO,
    DaskCluster,
    WorkPool,
    create_deployment,
    dask_cluster,
    kill_tree,
    process_tree,
    wait_for,
)
from tests.prefect_server import pointed_at, prefect_server

__all__ = ["prefect_server"]

ENRICHMENT_NAMES = [e["name"] for e in ENRICHMENTS]


@pytest.fixture(scope="module")
def server_api(prefect_server: PrefectServer) -> Iterator[str]:
    """This process and every process it starts talk to the shared server."""
    with pointed_at(prefect_server) as api_url:
        yield api_url


@pytest.fixture
def prefect_api(server_api: str) -> str:
    """`run_flow` (tests/flows/conftest.py) runs against the shared server here."""
    return server_api


@pytest.fixture(scope="module")
def process_env(server_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=server_api,
        BATCH_API_KEY=FLOW_TEST_KEY,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    return env


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale-out-logs")


@pytest.fixture(scope="module")
def cluster(process_env: dict[str, str], logs: Path) -> Iterator[DaskCluster]:
    with dask_cluster(logs, process_env, workers=2) as started:
        yield started


@pytest.fixture(scope="module")
def pool(server_api: str, process_env: dict[str, str], logs: Path) -> Iterator[WorkPool]:
    create_deployment(server_api)
    started = WorkPool(process_env, logs)
    try:
        started.start_worker(0)
        started.start_worker(1)
        yield started
    finally:
        started.stop()


@pytest.fixture
def workers(pool: WorkPool) -> WorkPool:
    pool.ensure_running()  # a test before may have killed one
    return pool


@pytest.fixture
def start_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Emulator]]:
    """`start_api(latency)`: one Batch API for every process of the test (flow, Dask workers,
    child runs), so its statistics count every batch the night paid for."""
    monkeypatch.setenv("BATCH_API_KEY", FLOW_TEST_KEY)
    started: list[Emulator] = []

    def start(latency: float = 0.0) -> Emulator:
        running = start_emulator(
            FLOW_TEST_KEY,
            tmp_path / "emulator.log",
            latency=latency,
            extra_args=["--db", str(tmp_path / "api.sqlite")],
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _api(emulator: Emulator, path: str) -> dict[str, Any]:
    response = httpx.get(
        f"{emulator.base_url}{path}", headers={"Authorization": f"Bearer {FLOW_TEST_KEY}"}
    )
    response.raise_for_status()
    return response.json()


def assert_no_line_paid_twice(emulator: Emulator, documents: int) -> None:
    """Every request line of the night was in exactly one accepted batch."""
    counts = _api(emulator, "/_emulator/custom_ids")["custom_ids"]
    assert len(counts) == documents * len(ENRICHMENTS)
    assert sorted(set(counts.values())) == [1], {k: v for k, v in counts.items() if v != 1}


def _without_metadata(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None).sort_by("id")


# ------------------------------------------------------------------ Dask by address


def test_groups_run_on_a_dask_cluster_by_address_with_the_thread_runners_output(
    run_flow, cluster: DaskCluster, start_api: Callable[..., Emulator], tmp_path: Path
) -> None:
    from distributed import Client

    emulator = start_api()

    source = tmp_path / "docs.parquet"
    pq.write_table(make_documents(60), source)
    common = {"source": str(source), "batch_api": emulator.base_url, "group_size": 15}
    threads = run_flow(destination=str(tmp_path / "threads"), **common)
    on_cluster = run_flow(
        destination=str(tmp_path / "dask"),
        task_runner="dask",
        dask_address=cluster.address,
        **common,
    )
    assert threads.groups == on_cluster.groups == 4
    expected = pq.read_table(tmp_path / "threads" / "enriched.parquet")
    actual = pq.read_table(tmp_path / "dask" / "enriched.parquet")
    assert _without_metadata(actual).equals(_without_metadata(expected))
    # The groups were prepared by the cluster's workers, and the cluster is still up.
    with Client(cluster.address, timeout=30) as client:
        done = client.run_on_scheduler(
            lambda dask_scheduler: {
                name: dict(prefix.state_counts)
                for name, prefix in dask_scheduler.task_prefixes.items()
            }
        )
        assert len(client.scheduler_info()["workers"]) == 2
    prepared = sum(
        counts.get("memory", 0) + counts.get("released", 0) + counts.get("forgotten", 0)
        for name, counts in done.items()
        if "prepare" in name
    )
    assert prepared >= 4, done
    # Both runs sent the same lines: the second one reused nothing and paid for its own.
    assert _api(emulator, "/_emulator/stats")["lines_received"] == 2 * 60 * len(ENRICHMENTS)


def test_an_unreachable_dask_address_fails_before_anything_is_paid(
    run_flow, start_api: Callable[..., Emulator], tmp_path: Path
) -> None:
    from deployments.local import free_port

    emulator = start_api()

    address = f"tcp://127.0.0.1:{free_port()}"
    source = tmp_path / "docs.parquet"
    pq.write_table(make_documents(5), source)
    common = {"source": str(source), "destination": str(tmp_path / "out")}
    with pytest.raises(TaskRunnerError, match=address):
        run_flow(batch_api=emulator.base_url, task_runner="dask", dask_address=address, **common)
    with pytest.raises(TaskRunnerError, match="task_runner='dask'"):
        run_flow(batch_api=emulator.base_url, dask_address=address, **common)
    assert _api(emulator, "/_emulator/stats")["batches_created"] == 0
    assert not Path(state_folder(common["destination"])).exists()


def test_a_dask_worker_lost_mid_run_costs_no_second_payment(
    run_flow, cluster: DaskCluster, start_api: Callable[..., Emulator], tmp_path: Path
) -> None:
    """Runs last of the Dask tests: it leaves the cluster one worker short."""
    import contextvars
    import threading

    emulator = start_api(latency=0.5)
    source = tmp_path / "docs.parquet"
    pq.write_table(make_documents(80), source)
    # One open batch at a time and groups of 10: groups are prepared all along the run.
    params = {
        "source": str(source),
        "destination": str(tmp_path / "out"),
        "batch_api": emulator.base_url,
        "group_size": 10,
        "max_in_flight": 1,
        "task_runner": "dask",
        "dask_address": cluster.address,
    }
    outcome: dict[str, Any] = {}
    # The thread sees this test's Prefect settings (a context variable).
    context = contextvars.copy_context()
    runner = threading.Thread(
        target=context.run, args=(lambda: outcome.update(report=run_flow(**params)),)
    )
    runner.start()
    wait_for(lambda: _api(emulator, "/_emulator/stats")["batches_created"] >= 2, 60, "2 batches")
    victim = cluster.workers[0]
    kill_tree(victim.pid)
    runner.join(120)
    assert not runner.is_alive()
    assert outcome["report"].groups == 8
    from distributed import Client

    with Client(cluster.address, timeout=30) as client:
        assert len(client.scheduler_info()["workers"]) == 1  # the rest ran on the survivor
    table = pq.read_table(tmp_path / "out" / "enriched.parquet")
    assert sorted(table.column("id").to_pylist()) == sorted(
        pq.read_table(source).column("id").to_pylist()
    )
    for name in ENRICHMENT_NAMES:
        assert table.column(f"{name}_error").null_count == 80
    assert_no_line_paid_twice(emulator, 80)
    assert _api(emulator, "/_emulator/stats")["batches_created"] == 8


# ------------------------------------------------------------------ a night over a work pool


def _partitioned_job(source: str, destination: str, emulator: Emulator) -> dict[str, Any]:
    return {
        "source": source,
        "destination": destination,
        "enrichments": ENRICHMENTS,
        "parts": 4,
        "deployment": DEPLOYMENT,
        "batch_api": emulator.base_url,
        "output_format": "delta",
        "shard_size": 20,
        "group_size": 40,
        "poll_interval_seconds": 0.2,
    }


def _assert_one_delta_version(destination: str, source_table: pa.Table) -> None:
    table = DeltaTable(destination)
    assert table.version() == 0
    assert len(table.history()) == 1
    rows = table.to_pyarrow_table()
    assert sorted(rows.column("id").to_pylist()) == sorted(source_table.column("id").to_pylist())
    for name in ENRICHMENT_NAMES:
        assert rows.column(f"{name}_error").null_count == rows.num_rows
    assert rows.select(source_table.column_names).sort_by("id").equals(source_table.sort_by("id"))


def _locks_held_by(pids: list[int], destination: str) -> list[str]:
    held = []
    for lock in (Path(state_folder(destination)) / "parts" / "_batch-enrich").glob("*/lock.json"):
        try:
            if json.loads(lock.read_text())["pid"] in pids:
                held.append(lock.parent.name)
        except (OSError, ValueError, KeyError):
            continue
    return held


def test_a_night_in_four_parts_survives_a_killed_worker_and_is_one_delta_version(
    workers: WorkPool,
    start_api: Callable[..., Emulator],
    process_env: dict[str, str],
    tmp_path: Path,
) -> None:
    from flows.partitioned import enrich_partitioned

    # Batches take 3 s: long enough to kill a worker while they are open.
    emulator = start_api(latency=3.0)

    source = tmp_path / "docs.parquet"
    source_table = make_documents(240)
    pq.write_table(source_table, source)
    destination = str(tmp_path / "enriched")
    job = _partitioned_job(str(source), destination, emulator)
    (tmp_path / "job.json").write_text(json.dumps(job))
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, sys; from flows.partitioned import enrich_partitioned; "
            "enrich_partitioned(**json.load(open(sys.argv[1])))",
            str(tmp_path / "job.json"),
        ],
        env=process_env,
        cwd=REPO,
        stdout=(tmp_path / "parent.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    lines = 240 * len(ENRICHMENTS)
    try:
        # Every part has sent all its lines: the batches are open at the API (2 s each) and
        # recorded in the parts' ledgers, so nothing is on the wire when the worker dies.
        wait_for(
            lambda: _api(emulator, "/_emulator/stats")["lines_received"] == lines,
            120,
            "all four parts to submit their batches",
            workers.workers,
        )
        time.sleep(0.3)
        victim = next(
            w for w in workers.workers if _locks_held_by(process_tree(w.pid), destination)
        )
        held = _locks_held_by(process_tree(victim.pid), destination)
        kill_tree(victim.pid)
    finally:
        kill_tree(parent.pid)
        parent.wait()
    assert held, "the killed worker was running no part"
    batches_before = _api(emulator, "/_emulator/stats")["batches_created"]

    report = enrich_partitioned(**job)

    assert report.split == "id"
    assert [p.part for p in report.parts] == ["1/4", "2/4", "3/4", "4/4"]
    assert sum(p.rows for p in report.parts) == report.rows_out == 240
    assert all(p.state == "Completed" for p in report.parts)
    # The killed worker's parts ran again (their runs were taken for dead); the others were
    # found finished or still running and were not started twice.
    rerun = {f"part-{int(p.part.split('/')[0]):05d}" for p in report.parts if p.attempts > 1}
    assert rerun == set(held)
    assert all(p.attempts <= 2 for p in report.parts)
    _assert_one_delta_version(destination, source_table)
    assert _api(emulator, "/_emulator/stats")["batches_created"] == batches_before
    assert_no_line_paid_twice(emulator, 240)
    # Readers see the destination only: the parts' outputs are gone, their state stays.
    parts = Path(state_folder(destination)) / "parts"
    assert not list(parts.glob("part-*/enriched.parquet"))
    assert len(list((parts / "_batch-enrich").glob("part-*/generation.json"))) == 4
