"""Resolve the flow's `batch_api` parameter into something tasks can call.

- "embedded": start the local emulator in this process for the run (heuristic results).
- "http://..." or "https://...": that base URL, the key from the BATCH_API_KEY environment
  variable.
- anything else: the name of a saved `BatchApi` block document.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import SecretStr

from blocks.batch_api import BatchApi
from tasks.state import digest, state_root
from tasks.storage import StorageSettings, filesystem, is_local

EMBEDDED = "embedded"
EMBEDDED_LABEL = "embedded-emulator (heuristic engine)"
API_KEY_ENV = "BATCH_API_KEY"
# The embedded emulator's database: kept until the run succeeds, so a rerun can resume.
EMBEDDED_DB = "embedded-emulator.sqlite"


class BackendError(ValueError):
    """`batch_api` does not name a usable backend; the message says how to fix it."""


@dataclass(frozen=True)
class Backend:
    api: BatchApi  # where the API is, its key and limits: it builds the client
    label: str  # provenance: "embedded-emulator (heuristic engine)" or the base URL

    @property
    def poll_interval_seconds(self) -> float:
        return self.api.poll_interval_seconds


def api_block(batch_api: str) -> BatchApi:
    """The settings `batch_api` names, without starting or calling anything: limits, prices
    and budgets for a dry run and the budget guard."""
    if batch_api == EMBEDDED:
        return BatchApi(base_url="http://127.0.0.1")
    if batch_api.startswith(("http://", "https://")):
        return BatchApi(base_url=batch_api.rstrip("/"))
    return load_block(batch_api)


def load_block(name: str) -> BatchApi:
    try:
        return BatchApi.load(name)
    except ValueError as exc:
        raise BackendError(
            f"batch_api={name!r} is not 'embedded', not an http(s):// URL, and no BatchApi "
            f"block document of that name could be loaded ({exc}). Create one in the Prefect "
            "UI (Blocks > Batch API) or with `python -m blocks.register`."
        ) from None


def embedded_workers() -> int:
    """Engine processes of the embedded emulator: one per core, so batches run in parallel."""
    return max(1, min(4, os.cpu_count() or 1))


def backend_label(batch_api: str, block: BatchApi) -> str:
    """Provenance: the embedded emulator, or the API's base URL."""
    return EMBEDDED_LABEL if batch_api == EMBEDDED else block.base_url


def embedded_db_path(destination: str, settings: StorageSettings | None = None) -> str:
    """Where the embedded emulator keeps its batches for a run on `destination`: with the
    run's working state for a local destination, else in the temporary directory."""
    fs, root = filesystem(destination, settings)
    if is_local(fs):
        folder = state_root(root)
    else:
        folder = os.path.join(tempfile.gettempdir(), f"batch-enrich-{digest(root)}")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, EMBEDDED_DB)


def _remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


@contextmanager
def resolve_backend(
    batch_api: str,
    destination: str,
    settings: StorageSettings | None = None,
    block: BatchApi | None = None,
) -> Iterator[Backend]:
    """The API of a run on `destination`. `block` is the named block when the caller has
    loaded it already (`api_block`).

    The embedded emulator keeps its batches on disk (`embedded_db_path`) until the run
    succeeds, that is until the `with` block ends without an exception: a rerun after a crash
    then finds the batches the crashed run submitted."""
    if batch_api == EMBEDDED:
        from batchapi.emulator.process import emulator_process

        key = SecretStr(secrets.token_urlsafe(24))
        database = embedded_db_path(destination, settings)
        # A child process: the engine and its HTTP server get their own interpreter lock.
        with emulator_process(
            api_key=key.get_secret_value(), db_path=database, workers=embedded_workers()
        ) as emulator:
            block = BatchApi(base_url=emulator.base_url, api_key=key, poll_interval_seconds=0.5)
            yield Backend(block, backend_label(batch_api, block))
        _remove_database(database)
        return
    if batch_api.startswith(("http://", "https://")):
        raw = os.environ.get(API_KEY_ENV)
        block = BatchApi(base_url=batch_api.rstrip("/"), api_key=SecretStr(raw) if raw else None)
        yield Backend(block, block.base_url)
        return
    block = block or load_block(batch_api)
    yield Backend(block, block.base_url)
