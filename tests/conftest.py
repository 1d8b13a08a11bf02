"""Session-wide settings that make the suite hermetic and reliable (see README, Development)."""

from __future__ import annotations

import os
import tempfile

# Set before Prefect is imported anywhere: its settings are read at import time.
_PREFECT_HOME = tempfile.mkdtemp(prefix="batch-enrich-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import shutil  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import closing  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from batchapi.emulator.runner import RunningEmulator, start_emulator  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TEST_API_KEY = "test-key"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real S3 API (moto in server mode) on a loopback port, for the whole session.

    boto3, s3fs and pyarrow all reach it through the standard AWS environment variables.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture
def s3_bucket(moto_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket named after the test."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    name = name.strip("-") + f"-{free_port()}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One temporary Prefect server for every test that runs a flow."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def migrated_prefect_db(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session server's database, for tests whose run starts a temporary
    Prefect server of its own: on a database whose schema is in place (as on any machine after
    its first run) that server starts in about 18 s instead of 30."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    source = PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
    copy = tmp_path_factory.mktemp("prefect-db") / "prefect.db"
    with closing(sqlite3.connect(source)) as live, closing(sqlite3.connect(copy)) as target:
        live.backup(target)
    return copy


def prefect_home(path: Path, database: Path) -> str:
    """A PREFECT_HOME at `path` whose temporary server uses a copy of `database`."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(database, path / "prefect.db")
    return str(path)


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., RunningEmulator]]:
    """`emulator_factory(**config_overrides)` starts an emulator; all are stopped at teardown.

    The api key defaults to "test-key"; pass `api_key=None` to turn authentication off.
    """
    started: list[RunningEmulator] = []

    def start(**overrides: Any) -> RunningEmulator:
        overrides.setdefault("api_key", TEST_API_KEY)
        running = start_emulator(**overrides)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
