"""The task runner the groups are prepared on: threads, a local Dask cluster, or a running one.

Only `prepare-group` goes to the runner. The batch engine (`run-batches`: every submission,
poll and fetch, and the one window of `max_in_flight` open batches) stays in the flow's
process whatever the runner, so the window is one for the whole run however many workers a
cluster has, and nothing a worker does is paid for: a worker lost mid-run costs Dask a rerun of
that group's preparation on another worker, never a second batch.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

DASK_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
DEFAULT_SCHEDULER_PORT = 8786
# How long the early check waits for the scheduler to accept a connection.
CONNECT_TIMEOUT_SECONDS = 10.0


class TaskRunnerError(ValueError):
    """The task runner parameters cannot work; the message says what to change."""


def check_task_runner(kind: str, dask_address: str | None, api_url: str | None) -> None:
    """Refuse, before anything is read or paid, a runner that cannot start."""
    if dask_address and kind != "dask":
        raise TaskRunnerError(
            f"dask_address={dask_address!r} is set but task_runner is {kind!r}: set "
            "task_runner='dask' to prepare the groups on that cluster, or leave dask_address "
            "empty"
        )
    if kind != "dask":
        return
    if not api_url:
        raise TaskRunnerError(
            "task_runner='dask' runs tasks in worker processes that must reach a Prefect "
            "server: start one (`prefect server start`) and set PREFECT_API_URL, or use "
            "task_runner='thread'"
        )
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        raise TaskRunnerError(
            "task_runner='dask' needs prefect-dask: pip install 'batch-enrich[dask]'"
        ) from None
    if dask_address:
        check_scheduler(dask_address)


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in DASK_SCHEMES or not parts.hostname:
        raise TaskRunnerError(
            f"dask_address={address!r} is not a Dask scheduler address: give one like "
            f"tcp://scheduler-host:{DEFAULT_SCHEDULER_PORT} (what `dask scheduler` prints)"
        )
    try:
        port = parts.port or DEFAULT_SCHEDULER_PORT
    except ValueError:
        raise TaskRunnerError(f"dask_address={address!r} has an invalid port") from None
    return parts.hostname, port


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """The scheduler at `address` accepts a connection (the full Dask handshake is the
    runner's, at start; this only makes a wrong or dead address fail in seconds)."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise TaskRunnerError(
            f"no Dask scheduler answers at dask_address={address!r} ({exc}); start one "
            f"(`dask scheduler --port {port}`) and its workers (`dask worker {address}`), "
            "fix the address, or leave dask_address empty for a local cluster"
        ) from None


def make_task_runner(
    kind: str, parallel_groups: int, dask_address: str | None = None
) -> TaskRunner:
    """Threads by default; `dask` spreads groups over a Dask cluster's processes: the one at
    `dask_address`, else a `LocalCluster` of `parallel_groups` workers started for the run."""
    if kind != "dask":
        return ThreadPoolTaskRunner(max_workers=parallel_groups)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        # The cluster is the user's: the runner connects to it and leaves it running.
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": parallel_groups,
            "threads_per_worker": 1,
            "processes": True,
            # None would still bind :8787 on every interface.
            "dashboard_address": "127.0.0.1:0",
        }
    )
