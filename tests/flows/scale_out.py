"""Real processes for the scale-out tests: a Dask scheduler and workers, a process work pool
with Prefect workers, and the deployment the partitioned flow runs its parts on."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deployments.local import Child, free_port, spawn

REPO = Path(__file__).resolve().parents[2]
POOL = "scale-out-test-pool"
DEPLOYMENT_NAME = "scale-out-test"
DEPLOYMENT = f"enrich-documents/{DEPLOYMENT_NAME}"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def wait_for(check, timeout: float, what: str, logs: list[Child] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {c.name}:\n{c.log_tail(20)}" for c in logs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


@dataclass
class DaskCluster:
    address: str
    scheduler: Child
    workers: list[Child]

    def stop(self) -> None:
        for child in [*self.workers, self.scheduler]:
            child.stop(timeout=10)


@contextlib.contextmanager
def dask_cluster(logs: Path, env: dict[str, str], workers: int = 2) -> Iterator[DaskCluster]:
    """`dask scheduler` and `dask worker` processes on loopback, as a user starts them."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = spawn(
        "dask scheduler",
        [_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env,
        logs / "dask-scheduler.log",
        cwd=REPO,
    )
    started = DaskCluster(address, scheduler, [])
    try:
        for i in range(workers):
            started.workers.append(
                spawn(
                    f"dask worker {i}",
                    [
                        _bin("dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"worker-{i}",
                    ],
                    env,
                    logs / f"dask-worker-{i}.log",
                    cwd=REPO,
                )
            )
        wait_for(
            lambda: "Scheduler at:" in scheduler.log_tail(50), 60, "the dask scheduler", [scheduler]
        )
        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield started
    finally:
        started.stop()


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (flow runs start in sessions of their own, so the
    process group is not enough)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGSTOP the whole tree first, so nothing in it reacts, then SIGKILL it."""
    pids = process_tree(pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for each in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, sig)
    return pids


@dataclass
class WorkPool:
    env: dict[str, str]
    logs: Path
    workers: list[Child] = field(default_factory=list)

    def start_worker(self, index: int) -> Child:
        child = spawn(
            f"prefect worker {index}",
            [
                _bin("prefect"),
                "worker",
                "start",
                "--pool",
                POOL,
                "--type",
                "process",
                "--limit",
                "2",
                "--name",
                f"scale-out-worker-{index}-{time.monotonic_ns()}",
            ],
            self.env,
            self.logs / f"prefect-worker-{index}.log",
            cwd=REPO,
        )
        if index < len(self.workers):
            self.workers[index] = child
        else:
            self.workers.append(child)
        return child

    def ensure_running(self) -> None:
        for index, child in enumerate(self.workers):
            if not child.running():
                child.process.wait()
                self.start_worker(index)

    def stop(self) -> None:
        for child in self.workers:
            child.stop(timeout=20)


def create_deployment(api_url: str) -> None:
    """The enrich-documents deployment the parts run on, on a process pool of its own, run
    from this checkout (as `prefect.yaml`'s pull step does)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.utilities.callables import parameter_schema

    from flows.enrich import enrich_documents

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = client.create_flow_from_name("enrich-documents")
        client.create_deployment(
            flow_id=flow_id,
            name=DEPLOYMENT_NAME,
            work_pool_name=POOL,
            entrypoint="flows/enrich.py:enrich_documents",
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ],
            parameter_openapi_schema=parameter_schema(enrich_documents).model_dump_for_openapi(),
            parameters={},
        )
