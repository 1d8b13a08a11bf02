"""The emulator's HTTP surface: revision B of the Batch API plus the three realtime endpoints."""

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
from batchapi.emulator.store import Store, StoredBatch
from batchapi.emulator.worker import Worker
from batchapi.models import MODELS, ClassifyBody, ExtractBody, SummarizeBody, iter_jsonl

log = logging.getLogger(__name__)

REALTIME_PATHS = frozenset({"/extract", "/summarization/abstractive", "/classify"})
_MODEL_CHOICES = ", ".join(repr(model) for model in MODELS)
_NOTHING_QUEUED = "Nothing in this request was queued."

# GAP: the error body format is undocumented. Every non-2xx JSON body is {"detail": "..."}
# (FastAPI's shape, seen in a third-party adapter), and realtime schema errors are FastAPI 422s.


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
        self.http_faults = HttpFaults(config.seed, config.http_fault_rate)

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
    if len(items) > config.max_lines:
        raise SubmissionError(
            f"batch has {len(items)} lines; the limit is {config.max_lines} lines per batch. "
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
    """Answers a share of API requests with 429/500/503 before anything else runs.

    GAP: no rate limits are documented for batch; 429s here are injected faults only, with
    Retry-After: 0 so that clients retrying in tests do not sleep.
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
        if given is None:
            raise HTTPException(401, "missing x-api-key header: send your API key in it")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "invalid API key in the x-api-key header")

    authorised = [Depends(require_key)]

    @app.exception_handler(SubmissionError)
    async def _bad_submission(_: Request, exc: SubmissionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal emulator error"}, status_code=500)

    # ------------------------------------------------------------------ batch API

    @app.post("/v1/batches", dependencies=authorised)
    async def create_batch(request: Request) -> Response:
        payload = await _read_capped(request, config.max_bytes)
        items = parse_submission(payload, config)
        # GAP: the id format beyond the example `batch_abc123`; ours is batch_ + 24 hex digits.
        batch_id = f"batch_{secrets.token_hex(12)}"
        stored = store.create_batch(
            batch_id, int(time.time()), payload, [item["custom_id"] for item in items]
        )
        worker.submit(batch_id)
        # GAP: the success status of a submission is undocumented; we answer 200.
        return Response(stored.view(time.time()).model_dump_json(), media_type="application/json")

    def stored_or_404(batch_id: str) -> StoredBatch:
        stored = store.get(batch_id)
        if stored is None:
            raise HTTPException(404, f"no batch with id {batch_id!r}")
        return stored

    @app.get("/v1/batches/{batch_id}", dependencies=authorised)
    def get_batch(batch_id: str) -> Response:
        stored = stored_or_404(batch_id)
        return Response(stored.view(time.time()).model_dump_json(), media_type="application/json")

    @app.get("/v1/batches/{batch_id}/output", dependencies=authorised)
    def get_output(batch_id: str) -> Response:
        stored = stored_or_404(batch_id)
        now = time.time()
        if not stored.is_visible_terminal(now):
            # Revision B documents 404 (not 409) for output that does not exist yet.
            status = stored.view(now).status.value
            raise HTTPException(
                404,
                f"batch {batch_id!r} is {status}; its output exists once the status is "
                "completed or failed: poll GET /v1/batches/{id} until then",
            )
        output = store.output(batch_id) or b""
        # GAP: the output's content type is undocumented; application/jsonl, input order.
        return Response(output, media_type="application/jsonl")

    # ------------------------------------------------------------------ realtime

    def run_engine(body: ExtractBody | SummarizeBody | ClassifyBody) -> dict[str, Any]:
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
