"""Background processing of accepted batches: validating -> in_progress -> completed | failed.

Request handlers only store and enqueue; the work happens here, on worker threads. Each line
is validated with the wire models and run through the engine independently, so one bad line
never fails its neighbours (spec §1.2 GAP: per-item validation errors are per-line errors).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from pydantic import ValidationError

from batchapi.emulator import engine
from batchapi.emulator.completion import chat_completion
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.faults import batch_fails, line_fails
from batchapi.emulator.store import Store
from batchapi.emulator.timing import in_progress_seconds
from batchapi.models import (
    MODELS,
    BatchStatus,
    LineError,
    LineErrorCode,
    LineResponse,
    OutputLine,
    RequestLine,
    iter_jsonl,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessedBatch:
    output: bytes
    completed: int
    failed: int
    succeeded_ids: list[str]


def describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence per problem, e.g. `body.labels: List should have at least 1 item`."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        if len(loc) >= 2 and loc[0] == "body" and loc[1] in MODELS:
            del loc[1]  # the union's tag, not a field the caller wrote
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'line'}: {message}")
    return "; ".join(parts)


def _error_line(custom_id: str, code: LineErrorCode, message: str) -> OutputLine:
    return OutputLine(custom_id=custom_id, error=LineError(code=code.value, message=message))


def _success_line(line: RequestLine, content: str, created: int) -> OutputLine:
    completion = chat_completion(line.body, content, created)
    return OutputLine(custom_id=line.custom_id, response=LineResponse(body=completion))


def _process_line(
    item: dict[str, Any], index: int, duplicated: bool, batch_seq: int, config: EmulatorConfig
) -> OutputLine:
    custom_id = str(item.get("custom_id", ""))
    if duplicated:
        # GAP: duplicate custom_ids within a batch. The spec leans to a whole-request 400; we
        # reject every occurrence per line instead, so a client joining output on custom_id
        # never sees one success and one error under the same id.
        return _error_line(
            custom_id,
            LineErrorCode.INVALID_REQUEST,
            f"custom_id {custom_id!r} appears more than once in this batch; every occurrence "
            "is rejected: give each line a unique custom_id",
        )
    try:
        line = RequestLine.model_validate(item)
    except ValidationError as exc:
        # GAP: bad method/url, missing or empty fields and `document` are per-line errors.
        return _error_line(custom_id, LineErrorCode.INVALID_REQUEST, describe_validation_error(exc))
    if line_fails(config.seed, config.fail_rate, batch_seq, index):
        return _error_line(
            custom_id,
            LineErrorCode.SERVER_ERROR,
            f"injected failure (fail rate {config.fail_rate}); retrying this line may succeed",
        )
    try:
        result = engine.run(line.body)
    except Exception as exc:
        log.exception("engine failed on line %r", custom_id)
        return _error_line(
            custom_id, LineErrorCode.SERVER_ERROR, f"engine error: {type(exc).__name__}: {exc}"
        )
    return _success_line(line, result.model_dump_json(), int(time.time()))


def process_request(request: bytes, batch_seq: int, config: EmulatorConfig) -> ProcessedBatch:
    """Run every line of a stored request; pure, so it can run in a worker process."""
    items = list(iter_jsonl(request))
    counts = Counter(item.get("custom_id") for item in items)
    completed = failed = 0
    succeeded: list[str] = []
    chunks: list[str] = []
    for index, item in enumerate(items):
        out = _process_line(item, index, counts[item.get("custom_id")] > 1, batch_seq, config)
        if out.ok:
            completed += 1
            succeeded.append(out.custom_id)
        else:
            failed += 1
        chunks.append(out.model_dump_json())
    return ProcessedBatch(_jsonl(chunks), completed, failed, succeeded)


def failed_request(request: bytes, reason: str) -> ProcessedBatch:
    """GAP: output of a `failed` batch. We serve one error line per input line (code
    server_error, so clients may resubmit) rather than a 404, so every custom_id is accounted
    for."""
    chunks = [
        _error_line(
            str(item.get("custom_id", "")), LineErrorCode.SERVER_ERROR, reason
        ).model_dump_json()
        for item in iter_jsonl(request)
    ]
    return ProcessedBatch(_jsonl(chunks), 0, len(chunks), [])


def _jsonl(chunks: list[str]) -> bytes:
    return "".join(chunk + "\n" for chunk in chunks).encode("utf-8")


class Worker:
    """Threads that take batch ids from a queue and process them to a terminal state."""

    def __init__(
        self, store: Store, config: EmulatorConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        # Each batch with the moment it was accepted: its latency runs from then, as a remote
        # provider's does, not from when this emulator's own queue got to it.
        self._queue: queue.Queue[tuple[str, float] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pool: Executor | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._config.workers > 1:
            # spawn: forking a process that runs threads (uvicorn, sqlite) is unsafe.
            self._pool = ProcessPoolExecutor(self._config.workers, mp_context=get_context("spawn"))
        restarted = self._clock()
        for batch_id in self._store.unfinished():
            self._queue.put((batch_id, restarted))
        for number in range(self._config.workers):
            thread = threading.Thread(target=self._loop, name=f"batch-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, batch_id: str) -> None:
        self._queue.put((batch_id, self._clock()))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the batches being processed; queued ones resume on the next start."""
        self._stopping.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            batch_id, accepted = item
            try:
                self._process(batch_id, accepted)
            except Exception:
                if self._stopping.is_set():
                    return  # left unfinished in the store: the next start resumes it
                log.exception("batch %s could not be processed", batch_id)
                self._fail_internally(batch_id)

    def _process(self, batch_id: str, accepted: float) -> None:
        batch = self._store.get(batch_id)
        request = self._store.request_of(batch_id)
        if batch is None or request is None or batch.status.is_terminal:
            return
        started = self._clock()
        self._store.mark_in_progress(batch_id, started)
        config = self._config
        # GAP: what makes a whole batch `failed` is undocumented. Here only a backend fault
        # (injected by batch_fail_rate) does; a batch whose every line failed still completes.
        if batch_fails(config.seed, config.batch_fail_rate, batch.seq):
            status = BatchStatus.FAILED
            result = failed_request(
                request,
                f"batch failed: injected backend fault (batch fail rate {config.batch_fail_rate});"
                " resubmit the line in a new batch",
            )
        else:
            status = BatchStatus.COMPLETED
            if self._pool is not None:
                result = self._pool.submit(process_request, request, batch.seq, config).result()
            else:
                result = process_request(request, batch.seq, config)
        visible_at = max(self._clock(), accepted + in_progress_seconds(config, batch.seq))
        self._store.finish(
            batch_id,
            status,
            result.completed,
            result.failed,
            visible_at,
            result.output,
            result.succeeded_ids,
        )

    def _fail_internally(self, batch_id: str) -> None:
        request = self._store.request_of(batch_id)
        if request is None:
            return
        result = failed_request(request, "internal emulator error; resubmit the line")
        self._store.finish(
            batch_id, BatchStatus.FAILED, 0, result.failed, self._clock(), result.output, []
        )
