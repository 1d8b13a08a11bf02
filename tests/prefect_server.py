"""One real `prefect server start` on a free loopback port, shared by tests/deployments and
tests/blocks: started on first use, stopped when the last session fixture using it ends.

Fixtures (imported by the conftest of each of those folders):
- `prefect_server`: the running server (session-scoped).
- `prefect_api`: points this process (settings and environment) at it for one test, then
  restores PREFECT_API_URL.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deployments.local import PrefectServer, free_port, start_prefect_server

_server: PrefectServer | None = None
_home: Path | None = None
_users = 0


def _acquire() -> PrefectServer:
    global _server, _home, _users
    if _server is None:
        _home = Path(tempfile.mkdtemp(prefix="batch-enrich-server-"))
        _server = start_prefect_server(_home, free_port(), _home / "server.log", ui=False)
    _users += 1
    return _server


def _release() -> None:
    global _server, _home, _users
    _users -= 1
    if _users > 0 or _server is None:
        return
    _drain_prefect_workers()
    _server.stop()
    if _home is not None:
        shutil.rmtree(_home, ignore_errors=True)
    _server, _home = None, None


def _drain_prefect_workers() -> None:
    """Send queued logs and events while the server still answers, not at interpreter exit."""
    if "prefect.logging.handlers" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    server = _acquire()
    try:
        yield server
    finally:
        _release()


@contextmanager
def pointed_at(server: PrefectServer) -> Iterator[str]:
    """This process (settings) and every process it starts (environment) talk to `server`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    with pointed_at(prefect_server) as api_url:
        yield api_url
