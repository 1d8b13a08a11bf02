"""The emulator's HTTP surface: the Batch API in revision B (default) or A, the three realtime
endpoints and the synchronous OpenAI-compatible ones."""

from __future__ import annotations

import hmac
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from batchapi.emulator import engine
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.faults import HttpFaults
from batchapi.emulator.openai_compat import install_openai_errors, openai_router
from batchapi.emulator.store import OpenBatchCapReached, Store, StoredBatch
from batchapi.emulator.worker import Worker
from batchapi.models import (
    MODELS,
    AnyBody,
    Batch,
    ClassifyBody,
    ExtractBody,
    Revision,
    RevisionABatch,
    SummarizeBody,
    iter_jsonl,
)

log = logging.getLogger(__name__)

REALTIME_PATHS = frozenset({"/extract", "/summarization/abstractive", "/classify"})
_MODEL_CHOICES = ", ".join(repr(model) for model in MODELS)
_NOTHING_QUEUED = "Nothing in this request was queued."

# GAP: the error body format is undocumented in both revisions. Every non-2xx JSON body is
# {"detail": "..."} (FastAPI's shape, seen in a third-party adapter), and schema errors of the
# realtime and chat endpoints are FastAPI 422s.

# GAP: batch id formats beyond the docs' examples `batch_abc123` (B) and `batch-abc123` (A):
# that prefix and 24 hex digits.
_ID_PREFIX = {Revision.B: "batch_", Revision.A: "batch-"}


def new_batch_id(revision: Revision) -> str:
    return f"{_ID_PREFIX[revision]}{secrets.token_hex(12)}"


def batch_reply(batch: Batch, revision: Revision, *, created: bool = False) -> Response:
    """A batch as the revision shows it: B's Batch object, or A's `batch_id`/`*_count` reply."""
    if revision is Revision.A:
        body = RevisionABatch.of(batch, created=created).to_json()
    else:
        body = batch.model_dump_json()
    return Response(body, media_type="application/json")


class Emulator:
    """The state behind one app: its store, worker and fault injector."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._tempdir: Path | None = None
        db_path = config.db_path
        if db_path is None:
            self._tempdir = Path(tempfile.mkdtemp(prefix="batch-emulator-"))
            db_path = self._tempdir / "emulator.sqlite3"
        self.store = Store(db_path)
        self.worker = Worker(self.store, config)
        self.http_faults = HttpFaults(config.seed, config.http_fault_rate, config.revision)

    def stats(self) -> dict[str, int]:
        return self.store.stats(time.time())

    def close(self) -> None:
        self.worker.stop()
        self.store.close()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)


class SubmissionError(ValueError):
    """A submission rejected as a whole (400): the message says which line and how to fix it."""


def parse_submission(payload: bytes, config: EmulatorConfig) -> list[dict[str, Any]]:
    """Check what must hold for the whole request (spec §1.3) and return its items."""
    if len(payload) > config.max_bytes:
        raise SubmissionError(
            f"request body is {len(payload)} bytes; the limit is {config.max_bytes} bytes. "
            f"Split the batch into smaller ones. {_NOTHING_QUEUED}"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"request body is not UTF-8 ({exc}). {_NOTHING_QUEUED}") from exc
    try:
        items = list(iter_jsonl(text))
    except ValueError as exc:
        raise SubmissionError(
            f"{exc}. Send one JSON object per line (JSONL). {_NOTHING_QUEUED}"
        ) from exc
    if not items:
        # GAP: an empty body is a 400, as the spec recommends.
        raise SubmissionError(
            "request body has no lines. Send one JSON object per line, each with custom_id, "
            "method, url and body."
        )
    limit = config.line_limit
    if limit is not None and len(items) > limit:
        raise SubmissionError(
            f"batch has {len(items)} lines; the limit is {limit} lines per batch. "
            f"Split it into several batches. {_NOTHING_QUEUED}"
        )
    for number, item in zip(_line_numbers(text, len(items)), items, strict=True):
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            # GAP: a line without a usable custom_id could not be matched to its output line,
            # so it rejects the whole request rather than becoming a per-line error.
            raise SubmissionError(
                f"line {number}: custom_id is missing or not a non-empty string. "
                f"Give every line a unique string custom_id. {_NOTHING_QUEUED}"
            )
        body = item.get("body")
        model = body.get("model") if isinstance(body, dict) else None
        if model not in MODELS:
            problem = "body is missing" if body is None else f"body.model is {model!r}"
            raise SubmissionError(
                f"line {number} (custom_id {custom_id!r}): {problem}; body.model must be one of "
                f"{_MODEL_CHOICES}. {_NOTHING_QUEUED}"
            )
    return items


def _line_numbers(text: str, count: int) -> list[int]:
    """Line numbers (1-based, as in an editor) of the items `iter_jsonl` returned."""
    numbers = [number for number, raw in enumerate(text.split("\n"), 1) if raw.strip()]
    if len(numbers) == count:
        return numbers
    return numbers[:1]  # one pretty-printed object spread over several lines


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise SubmissionError(
            f"request body is {declared} bytes; the limit is {limit} bytes. "
            f"Split the batch into smaller ones. {_NOTHING_QUEUED}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise SubmissionError(
                f"request body is over {limit} bytes. Split the batch into smaller ones. "
                f"{_NOTHING_QUEUED}"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class FaultInjection:
    """Answers a share of API requests with 429 or a 5xx before anything else runs.

    GAP: no rate limits are documented for batch; these 429s are injected faults (the other
    429 is the optional open-batch cap), with Retry-After: 0 so that clients retrying in tests
    do not sleep.
    """

    def __init__(self, app: ASGIApp, faults: HttpFaults, on_fault: Callable[[], None]) -> None:
        self.app = app
        self.faults = faults
        self.on_fault = on_fault

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/v1/") or path in REALTIME_PATHS:
                status = self.faults.pick()
                if status is not None:
                    self.on_fault()
                    headers = {"Retry-After": "0"} if status == 429 else None
                    response = JSONResponse(
                        {"detail": "injected fault"}, status_code=status, headers=headers
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(config: EmulatorConfig) -> FastAPI:
    emulator = Emulator(config)
    store, worker = emulator.store, emulator.worker

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            emulator.close()

    app = FastAPI(title="batch-enrich Batch API emulator", lifespan=lifespan)
    app.state.emulator = emulator
    app.add_middleware(
        FaultInjection,
        faults=emulator.http_faults,
        on_fault=lambda: store.bump("http_faults_injected"),
    )

    def require_key(request: Request) -> None:
        expected = config.key
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        if given is None and "authorization" in request.headers:
            # GAP: no page documents Bearer auth; an OpenAI SDK caller needs telling how.
            raise HTTPException(
                401,
                "missing x-api-key header: this API takes the key in x-api-key, not in "
                "Authorization (OpenAI SDK: default_headers={'x-api-key': key})",
            )
        if given is None:
            raise HTTPException(401, "missing x-api-key header: send your API key in it")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "invalid API key in the x-api-key header")

    def require_router() -> None:
        if not config.batch_router_configured:
            # Revision A's error table: 503 when the batch router is not configured.
            raise HTTPException(
                503,
                "batch router not configured: this server cannot take batches; ask its "
                "operator, or use the realtime endpoints",
            )

    authorised = [Depends(require_key)]
    batches = [*authorised, Depends(require_router)]
    revision = config.revision

    @app.exception_handler(SubmissionError)
    async def _bad_submission(_: Request, exc: SubmissionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal emulator error"}, status_code=500)

    # ------------------------------------------------------------------ batch API

    @app.post("/v1/batches", dependencies=batches)
    async def create_batch(request: Request) -> Response:
        payload = await _read_capped(request, config.max_bytes)
        items = parse_submission(payload, config)
        batch_id = new_batch_id(revision)
        now = time.time()
        try:
            stored = store.create_batch(
                batch_id,
                int(now),
                payload,
                [item["custom_id"] for item in items],
                max_open=config.max_open_batches,
                now=now,
            )
        except OpenBatchCapReached as exc:
            # GAP: neither revision documents a cap on open batches nor a 429 for batches;
            # this one models a provider's queue limit, with a fixed Retry-After.
            raise HTTPException(
                429,
                f"{exc.open_batches} batches are open; the limit is {config.max_open_batches}. "
                f"Retry after a batch completes. {_NOTHING_QUEUED}",
                headers={"Retry-After": str(config.open_cap_retry_after)},
            ) from None
        worker.submit(batch_id)
        # GAP: the success status of a submission is undocumented; we answer 200.
        return batch_reply(stored.view(now), revision, created=True)

    def stored_or_404(batch_id: str) -> StoredBatch:
        stored = store.get(batch_id)
        if stored is None:
            raise HTTPException(404, f"no batch with id {batch_id!r}")
        return stored

    # GAP: revision A's error table has no 404; an unknown id (and output asked for too early)
    # is a 404 in both revisions, as revision B documents.
    @app.get("/v1/batches/{batch_id}", dependencies=batches)
    def get_batch(batch_id: str) -> Response:
        return batch_reply(stored_or_404(batch_id).view(time.time()), revision)

    @app.get("/v1/batches/{batch_id}/output", dependencies=batches)
    def get_output(batch_id: str) -> Response:
        stored = stored_or_404(batch_id)
        now = time.time()
        if not stored.is_visible_terminal(now):
            # Revision B documents 404 (not 409) for output that does not exist yet.
            view = stored.view(now)
            status = RevisionABatch.of(view).status if revision is Revision.A else view.status
            raise HTTPException(
                404,
                f"batch {batch_id!r} is {status}; its output exists once the status is "
                "completed or failed: poll GET /v1/batches/{id} until then",
            )
        output = store.output(batch_id) or b""
        # GAP: the output's content type is undocumented; application/jsonl, input order.
        return Response(output, media_type="application/jsonl")

    # ------------------------------------------------------------------ realtime

    def run_engine(body: AnyBody) -> dict[str, Any]:
        try:
            return engine.run(body).model_dump(mode="json")
        except Exception as exc:
            log.exception("engine failed on a realtime %s request", body.model)
            raise HTTPException(500, f"engine error: {type(exc).__name__}") from exc

    @app.post("/extract", dependencies=authorised)
    def extract(body: ExtractBody) -> dict[str, Any]:
        return run_engine(body)

    @app.post("/summarization/abstractive", dependencies=authorised)
    def summarize(body: SummarizeBody) -> dict[str, Any]:
        started = time.perf_counter()
        result = run_engine(body)
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return result

    @app.post("/classify", dependencies=authorised)
    def classify(body: ClassifyBody) -> dict[str, Any]:
        return run_engine(body)

    # ------------------------------------------------------------------ OpenAI-compatible

    app.include_router(
        openai_router(authorised, int(time.time()), lambda: store.bump("chat_completions"))
    )
    install_openai_errors(app)

    # ------------------------------------------------------------------ test hooks

    @app.get("/_emulator/stats")
    def stats() -> dict[str, int]:
        return emulator.stats()

    @app.get("/_emulator/custom_ids")
    def custom_ids(batch_id: str | None = None) -> dict[str, Any]:
        if batch_id is None:
            return {"custom_ids": store.custom_id_counts()}
        request = store.request_of(batch_id)
        if request is None:
            raise HTTPException(404, f"no batch with id {batch_id!r}")
        return {
            "batch_id": batch_id,
            "custom_ids": [item.get("custom_id") for item in iter_jsonl(request)],
        }

    return app
