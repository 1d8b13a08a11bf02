"""Resolve the flow's `batch_api` parameter into something tasks can call.

- "embedded": start the local emulator in this process for the run (heuristic results).
- "http://..." or "https://...": that base URL, the key from the BATCH_API_KEY environment
  variable.
- anything else: the name of a saved `BatchApi` block document.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import SecretStr

from blocks.batch_api import BatchApi
from tasks.batch import ApiSettings

EMBEDDED = "embedded"
EMBEDDED_LABEL = "embedded-emulator (heuristic engine)"
API_KEY_ENV = "BATCH_API_KEY"


class BackendError(ValueError):
    """`batch_api` does not name a usable backend; the message says how to fix it."""


@dataclass(frozen=True)
class Backend:
    api: ApiSettings
    label: str  # provenance: "embedded-emulator (heuristic)" or the base URL
    poll_interval_seconds: float
    block: BatchApi | None = None


def _settings(block: BatchApi, key: SecretStr | None) -> ApiSettings:
    return ApiSettings(
        base_url=block.base_url,
        api_key=key,
        timeout_seconds=block.request_timeout_seconds,
        max_lines=block.max_lines_per_batch,
        max_bytes=block.max_bytes_per_batch,
    )


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


@contextmanager
def resolve_backend(
    batch_api: str, embedded_db: str | None = None, block: BatchApi | None = None
) -> Iterator[Backend]:
    """`embedded_db` keeps the embedded emulator's batches on disk, so a rerun after a crash
    finds the batches the crashed run submitted. `block` is the named block when the caller
    has loaded it already (`api_block`)."""
    if batch_api == EMBEDDED:
        from batchapi.emulator.runner import emulator_process

        key = SecretStr(secrets.token_urlsafe(24))
        # A child process: the engine and its HTTP server get their own interpreter lock.
        with emulator_process(
            api_key=key.get_secret_value(), db_path=embedded_db, workers=embedded_workers()
        ) as emulator:
            block = BatchApi(
                base_url=emulator.base_url,
                api_key=key,
                poll_interval_seconds=0.5,
            )
            yield Backend(_settings(block, key), backend_label(batch_api, block), 0.5, block)
        return
    if batch_api.startswith(("http://", "https://")):
        raw = os.environ.get(API_KEY_ENV)
        block = BatchApi(base_url=batch_api.rstrip("/"), api_key=SecretStr(raw) if raw else None)
        yield Backend(_settings(block, block.api_key), block.base_url, 5.0, block)
        return
    block = block or load_block(batch_api)
    yield Backend(
        _settings(block, block.api_key), block.base_url, block.poll_interval_seconds, block
    )
