"""Submit shards, wait for their batches, fetch and decode the output: the batch engine.

One `BatchEngine` per run holds the run's in-flight window: at most `max_in_flight` batches
open at the provider at any moment, whatever group they come from. Groups of documents are
added as the flow reads them (a bounded lookahead); their shards wait in one queue, oldest
group first, and a slot that frees is refilled at once. Retries of failed lines go back into the
same queue as soon as their group's attempt is complete, so no group waits for another's
stragglers.

The engine runs inside one Prefect task, `run-batches`, that lives as long as the run's
waiting does. A batch that is not done yet is simply waited for; the task's retries (declared
on the decorator) are for failures, such as an object store that refused the ledger for a while.

Never paying twice: before a shard is sent its intent goes into the ledger (`tasks.ledger`),
and its batch id follows the answer. At most `parallel_submissions` shards are on the wire at
once, and a batch id is written with the next intent, so the ledger as last written never has
more than that many shards in doubt after a crash; the rerun names each one, reattaches to
every batch whose id was recorded, and sends the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from batchapi.client import (
    AsyncBatchApiClient,
    BatchApiError,
    NotFoundError,
    SubmitOutcomeUnknownError,
    TerminalApiError,
    TransientApiError,
    parse_output,
)
from batchapi.models import (
    Batch,
    BatchLimits,
    BatchStatus,
    DecodeError,
    OutputLine,
)
from batchapi.registry import decode_content
from blocks.batch_api import BatchApi
from tasks.ledger import Ledger
from tasks.merge import results_for
from tasks.shard import GroupLines, Shard, shard_payload, split_into_shards
from tasks.state import results_table
from tasks.window import AdaptiveWindow, PollSchedule

try:
    # The engine's loop: uvloop's loop and sockets are in C, and every poll, submit and download
    # goes through them (bench/pipeline.py --scenario cpu). It does not exist on Windows.
    from uvloop import new_event_loop
except ImportError:  # pragma: no cover
    from asyncio import new_event_loop

# Per-line error codes (the API's own plus ours) that a new attempt may fix.
RETRYABLE_LINE_CODES = frozenset({"server_error", "rate_limited", "batch_failed", "missing_output"})

# With no answer at all from the API this long, the run stops: nothing has been paid yet.
UNREACHABLE_AFTER_SECONDS = 30.0
# Polls and output downloads on the wire at once.
MAX_CONCURRENT_POLLS = 8
# The polling budget per batch that finishes (see BatchEngine._poll_rate).
POLLS_PER_FINISHED_BATCH = 3.0
# A batch's first looks are outside that budget: the one when batches like it usually finish,
# and the one a step later. Batches sent together finish together, and a budget measured on the
# completions seen so far would ration the very looks that see them finish.
FREE_LOOKS = 2
# A batch id is written with the next shard's intent, or after this long at the latest.
SETTLE_AFTER_SECONDS = 0.5
# How often the progress artifact moves, and how often a status line is logged.
PROGRESS_EVERY_SECONDS = 5.0
STATUS_EVERY_SECONDS = 60.0
FIRST_STATUS_SECONDS = 15.0


class BatchWaitTimeout(Exception):
    """The run's deadline passed with batches still open. They stay in the ledger; the next
    run of the same job reattaches to them instead of submitting again."""

    def __init__(self, open_batches: list[str], timeout_seconds: float) -> None:
        self.open_batches = open_batches
        shown = ", ".join(open_batches[:20]) + (" ..." if len(open_batches) > 20 else "")
        super().__init__(
            f"timed out after {timeout_seconds:.0f}s with {len(open_batches)} batch(es) open: "
            f"{shown}. Rerun the same job to pick them up (nothing is resubmitted), or raise "
            "timeout_seconds."
        )


class ApiUnreachableError(TerminalApiError):
    """No request to the API has succeeded in this run and connections keep failing."""


@dataclass(frozen=True)
class EngineOptions:
    limits: BatchLimits
    max_in_flight: int
    parallel_submissions: int
    poll_interval_seconds: float
    timeout_seconds: float
    deadline: float  # wall clock (time.time())
    max_line_attempts: int
    models: dict[str, str]  # enrichment name -> model
    total_lines: int  # every (document, enrichment) pair of the run, for progress
    unreachable_after_seconds: float = UNREACHABLE_AFTER_SECONDS


@dataclass
class GroupOutcome:
    lines: GroupLines
    results: pa.Table
    batches_submitted: int = 0
    batches_reattached: int = 0
    lines_sent: int = 0
    prompt_tokens: int = 0


@dataclass
class EngineReport:
    batches_submitted: int = 0
    batches_reattached: int = 0
    rate_limited: int = 0
    polls: int = 0
    window_shrinks: int = 0
    ledger_writes: int = 0
    in_doubt: list[str] = field(default_factory=list)


@dataclass
class Progress:
    batches_done: int
    batches_open: int
    batches_queued: int
    lines_done: int
    lines_total: int
    rate_limited: int
    window: int
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.lines_done / self.lines_total) if self.lines_total else 1.0

    def describe(self) -> str:
        if self.lines_total and self.lines_done >= self.lines_total:
            eta = "now"
        elif self.eta_seconds is None:
            eta = "unknown yet"
        else:
            at = time.strftime("%H:%M:%S %Z", time.localtime(time.time() + self.eta_seconds))
            eta = f"{at} (in {_duration(self.eta_seconds)})"
        return (
            f"batches {self.batches_done} done, {self.batches_open} open, "
            f"{self.batches_queued} queued (window {self.window}); lines {self.lines_done} of "
            f"{self.lines_total} ({100 * self.fraction:.0f}%); 429s {self.rate_limited}; "
            f"estimated finish {eta}"
        )


def _duration(seconds: float) -> str:
    """`42 s`, `17 min`, `5 h 04 min`: what someone reading the log wants to know."""
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _error_row(custom_id: str, code: str, message: str, attempt: int) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "result": None,
        "error": message,
        "error_code": code,
        "attempts": attempt,
    }


def _ok_row(custom_id: str, result: Any, attempt: int) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "result": orjson.dumps(result).decode(),
        "error": None,
        "error_code": None,
        "attempts": attempt,
    }


# What an output line says about one custom id: ("ok", content, echoed model) or
# ("error", code, message).
_Found = tuple[str, str, str | None]


def _rows(
    shard: Shard, model_of: Callable[[str], str | None], found: dict[str, _Found]
) -> list[dict[str, Any]]:
    """One result row per custom id of the shard, matched on custom_id (never on order)."""
    rows: list[dict[str, Any]] = []
    for custom_id in shard.custom_ids:
        line = found.get(custom_id)
        if line is None:
            rows.append(
                _error_row(
                    custom_id, "missing_output", "line missing from batch output", shard.attempt
                )
            )
        elif line[0] == "error":
            rows.append(_error_row(custom_id, line[1], line[2] or "", shard.attempt))
        else:
            model = model_of(custom_id) or line[2] or ""
            try:
                result = decode_content(custom_id, model, line[1], stored=True)
            except DecodeError as exc:
                rows.append(_error_row(custom_id, "decode_error", str(exc), shard.attempt))
                continue
            rows.append(_ok_row(custom_id, result, shard.attempt))
    return rows


def decode_output_bytes(
    shard: Shard, model_of: Callable[[str], str | None], payload: bytes
) -> tuple[list[dict[str, Any]], int]:
    """The shard's result rows and prompt tokens from the output JSONL: orjson reads each
    line's envelope and the domain result is validated in one parse of its content. A line of
    any other shape (an HTTP-style error, a missing field) sends the whole output through the
    lenient `parse_output` instead."""
    found: dict[str, _Found] = {}
    tokens = 0
    try:
        for raw in payload.split(b"\n"):
            if not raw.strip():
                continue
            item = orjson.loads(raw)
            custom_id, error, response = item["custom_id"], item.get("error"), item.get("response")
            if error is None and response.get("status_code", 200) < 400:
                body = response["body"]
                content = body["choices"][0]["message"]["content"]
                if not isinstance(custom_id, str) or not isinstance(content, str):
                    raise TypeError("unexpected output line")
                found[custom_id] = ("ok", content, body.get("model"))
                usage = body.get("usage")
                tokens += usage.get("prompt_tokens", 0) if usage else 0
            else:
                found[custom_id] = ("error", str(error["code"]), str(error["message"]))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        lines = parse_output(payload)
        return decode_output(shard, model_of, lines), _prompt_tokens(lines)
    return _rows(shard, model_of, found), tokens


def _prompt_tokens(lines: list[OutputLine]) -> int:
    return sum(
        line.response.body.usage.prompt_tokens
        for line in lines
        if line.response is not None and line.response.body.usage is not None
    )


def decode_output(
    shard: Shard, model_of: Callable[[str], str | None], lines: list[OutputLine]
) -> list[dict[str, Any]]:
    """One result row per custom id of the shard, from parsed output lines."""
    found: dict[str, _Found] = {}
    for line in lines:
        if line.error is not None:
            found[line.custom_id] = ("error", line.error.code, line.error.message)
        elif line.response is not None:
            body = line.response.body
            found[line.custom_id] = ("ok", body.choices[0].message.content, body.model)
    return _rows(shard, model_of, found)


@dataclass(eq=False)
class _Work:
    """One shard on its way: queued, on the wire, open at the provider, or recorded."""

    shard: Shard
    job: _Job
    batch_id: str | None = None
    submitted_at: float = 0.0  # monotonic
    seen_open_at: float = 0.0  # monotonic: the last answer that said it was not done yet
    looks_open: int = 0  # answers since its first look was set that said it was not done yet
    next_poll: float = 0.0
    in_doubt: bool = False
    busy: bool = False  # a poll or download of it is on the wire


@dataclass(eq=False)
class _Job:
    """A group of documents inside the engine, attempt by attempt."""

    lines: GroupLines
    pending: list[str]
    future: concurrent.futures.Future[GroupOutcome]
    attempt: int = 0
    waiting: set[str] = field(default_factory=set)  # shard ids of this attempt not recorded
    attempt_rows: list[dict[str, Any]] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    submitted: int = 0
    reattached: int = 0
    lines_sent: int = 0
    prompt_tokens: int = 0


class BatchEngine:
    """The run's batches, one in-flight window. Groups come in from the flow's thread with
    `add_group`; `run()` drives them on an event loop in another thread."""

    def __init__(
        self,
        ledger: Ledger,
        api: BatchApi,
        options: EngineOptions,
    ) -> None:
        self.ledger = ledger
        self.api = api
        self.options = options
        self.window = AdaptiveWindow(options.max_in_flight)
        self.schedule = PollSchedule(options.poll_interval_seconds)
        self.report = EngineReport()
        self._inbox: deque[Callable[[], None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._queue: list[tuple[int, int, int, _Work]] = []
        self._seq = itertools.count()
        self._open: dict[str, _Work] = {}
        # Open batches by when to poll them: their first looks (FREE_LOOKS), and the rest.
        self._first_polls: list[tuple[float, int, _Work]] = []
        self._polls: list[tuple[float, int, _Work]] = []
        self._on_wire: set[_Work] = set()
        self._jobs: dict[int, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._input_closed = False
        self._stopped = False
        self._fatal: BaseException | None = None
        self._client: AsyncBatchApiClient | None = None
        # Batch ids received, and those of them made durable; the oldest not yet durable.
        self._ids_recorded = 0
        self._ids_settled = 0
        self._oldest_unsettled: float | None = None
        self._settling = False
        self._polls_running = 0
        self._poll_tokens = 0.0
        self._tokens_at = time.monotonic()
        self._next_poll_at: float | None = None
        self._completions: deque[float] = deque(maxlen=64)
        self._submit_pause_until = 0.0
        self._submit_failures = 0
        self._ever_answered = False
        self._first_request_at: float | None = None
        self._last_trouble: BatchApiError | None = None
        self._batches_done = 0
        self._lines_done = 0
        self._samples: deque[tuple[float, int]] = deque(maxlen=120)
        self._last_progress = 0.0
        self._publishing = False
        self._last_status = time.monotonic()
        self.on_progress: Callable[[Progress], None] | None = None
        self.on_status: Callable[[Progress], None] | None = None
        self.logger: Any = None

    # ------------------------------------------------------------------ from the flow's thread

    def add_group(self, lines: GroupLines, pending: list[str]) -> concurrent.futures.Future:
        """Queue a prepared group; the future gives its `GroupOutcome` once every line has a
        final result."""
        future: concurrent.futures.Future[GroupOutcome] = concurrent.futures.Future()
        job = _Job(lines, pending, future)
        self._call(lambda: self._admit(job))
        return future

    def group_recorded(self, index: int) -> None:
        """The group's results are on storage: its ledger entries are no longer needed."""
        self._call(lambda: self.ledger.forget_group(index))

    def close_input(self) -> None:
        self._call(lambda: setattr(self, "_input_closed", True))

    def stop(self) -> None:
        self._call(lambda: setattr(self, "_stopped", True))

    def _call(self, action: Callable[[], None]) -> None:
        self._inbox.append(action)
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(event.set)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> EngineReport:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._fatal = None
        # The first status line comes after FIRST_STATUS_SECONDS, then about once a minute.
        self._last_status = time.monotonic() - STATUS_EVERY_SECONDS + FIRST_STATUS_SECONDS
        self._requeue_cut_off()
        try:
            async with self.api.client() as client:
                self._client = client
                remaining = self.options.deadline - time.time()
                async with asyncio.timeout(max(0.0, remaining)):
                    await self._drive()
                    await self._cancel_all()  # stopped early: what was on the wire is in doubt
        except TimeoutError:
            await self._cancel_all()
            self.ledger.sync_blocking()
            raise BatchWaitTimeout(
                [w.batch_id for w in self._open.values() if w.batch_id],
                self.options.timeout_seconds,
            ) from None
        except BaseException:
            await self._cancel_all()
            with contextlib.suppress(Exception):
                self.ledger.sync_blocking()
            raise
        finally:
            self._loop = None
            self._event = None
        await self.ledger.sync()
        self.report.ledger_writes = self.ledger.writes
        self.report.window_shrinks = self.window.shrinks
        return self.report

    async def _drive(self) -> None:
        assert self._event is not None
        while True:
            self._event.clear()
            while self._inbox:
                self._inbox.popleft()()
            if self._fatal is not None:
                raise self._fatal
            if self._stopped or (self._input_closed and not self._jobs):
                return
            now = time.monotonic()
            self._check_reachable(now)
            self._start_submissions(now)
            self._start_polls(now)
            self._maybe_settle(now)
            self._maybe_report(now)
            await self._sleep_until(self._next_wakeup(now))

    async def _sleep_until(self, when: float) -> None:
        assert self._event is not None
        delay = when - time.monotonic()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        waiter = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait([waiter], timeout=delay)
        finally:
            waiter.cancel()

    def _next_wakeup(self, now: float) -> float:
        every = max(PROGRESS_EVERY_SECONDS, self.options.poll_interval_seconds)
        candidates = [now + self.options.poll_interval_seconds, self._last_progress + every]
        if self._next_poll_at is not None:
            candidates.append(self._next_poll_at)
        if not self._ever_answered and self._first_request_at is not None:
            # (Once past, the check waits for a request to fail: no turn would change it.)
            give_up_at = self._first_request_at + self.options.unreachable_after_seconds
            if give_up_at > now:
                candidates.append(give_up_at)
        if self._queue and self._submit_pause_until > now:
            candidates.append(self._submit_pause_until)
        if self._oldest_unsettled is not None and not self._settling:
            # (While a write is on its way, its end wakes the loop.)
            candidates.append(self._oldest_unsettled + SETTLE_AFTER_SECONDS)
        return max(now, min(candidates))

    def _spawn(self, coroutine: Any) -> None:
        task_ = asyncio.ensure_future(coroutine)
        self._tasks.add(task_)
        task_.add_done_callback(self._task_done)

    def _task_done(self, task_: asyncio.Task[None]) -> None:
        self._tasks.discard(task_)
        if not task_.cancelled() and task_.exception() is not None and self._fatal is None:
            self._fatal = task_.exception()
        if self._event is not None:
            self._event.set()

    async def _cancel_all(self) -> None:
        for task_ in list(self._tasks):
            task_.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._requeue_cut_off()

    def _requeue_cut_off(self) -> None:
        """Submissions cut off mid-flight (a failed attempt of this task): in doubt now."""
        for work in list(self._on_wire):
            self._on_wire.discard(work)
            if work.batch_id is None:
                work.in_doubt = True
                self._push(work)
        self._ids_settled = self._ids_recorded
        self._oldest_unsettled = None
        self._settling = False
        # (A task cancelled before it started never runs its `finally`.)
        self._publishing = False
        self._polls_running = 0
        for work in self._open.values():
            work.busy = False
        self._first_polls, self._polls = [], []
        for work in self._open.values():
            self._push_poll(work)

    # ------------------------------------------------------------------ groups

    def _admit(self, job: _Job) -> None:
        index = job.lines.index
        self._jobs[index] = job
        self._lines_done += len(job.lines.known)
        if job.pending:
            self._plan(job, job.pending, attempt=1)
        else:
            self._finish(job)

    def _plan(self, job: _Job, pending: list[str], attempt: int) -> None:
        job.attempt = attempt
        job.attempt_rows = []
        shards = split_into_shards(
            pending, job.lines.requests, job.lines.index, attempt, self.options.limits
        )
        job.waiting = {s.shard_id for s in shards}
        now = time.monotonic()
        for shard in shards:
            work = _Work(shard, job)
            earlier = self.ledger.found.pop(shard.shard_id, None)
            if earlier is not None and earlier.batch_id is not None:
                work.batch_id = earlier.batch_id
                work.submitted_at = work.seen_open_at = now
                work.looks_open = 0
                self._open[shard.shard_id] = work
                self._schedule_poll(work, now)
                job.reattached += 1
                self.report.batches_reattached += 1
            else:
                if earlier is not None:
                    work.in_doubt = True
                    self.report.in_doubt.append(shard.shard_id)
                    self._log(
                        "warning",
                        "shard %s was on the wire when an earlier run stopped; the API cannot "
                        "say whether it arrived, so it is sent again (its batch may be paid "
                        "twice)",
                        shard.shard_id,
                    )
                self._push(work)

    def _push(self, work: _Work) -> None:
        shard = work.shard
        heapq.heappush(self._queue, (shard.group, shard.attempt, next(self._seq), work))

    def _shard_recorded(self, work: _Work, rows: list[dict[str, Any]]) -> None:
        job = work.job
        job.attempt_rows.extend(rows)
        job.waiting.discard(work.shard.shard_id)
        self._batches_done += 1
        if work.shard.attempt == 1:
            self._lines_done += len(rows)
        if job.waiting:
            return
        table = results_table(job.attempt_rows)
        job.tables.append(table)
        retry = [
            row["custom_id"]
            for row in job.attempt_rows
            if row["error_code"] in RETRYABLE_LINE_CODES
        ]
        if retry and job.attempt < self.options.max_line_attempts:
            self._plan(job, retry, job.attempt + 1)
        else:
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        self._jobs.pop(job.lines.index, None)
        outcome = GroupOutcome(
            job.lines,
            results_for(job.lines, job.tables),
            batches_submitted=job.submitted,
            batches_reattached=job.reattached,
            lines_sent=job.lines_sent,
            prompt_tokens=job.prompt_tokens,
        )
        job.lines.requests = {}  # the merge needs none of it; keep the lookahead small
        job.future.set_result(outcome)

    def _model_of(self, job: _Job) -> Callable[[str], str | None]:
        models = self.options.models
        return lambda custom_id: models.get(job.lines.enrichment_of(custom_id))

    # ------------------------------------------------------------------ submitting

    def _start_submissions(self, now: float) -> None:
        while self._queue and now >= self._submit_pause_until:
            # A place is held from the intent until the batch id is in: the id needs no place
            # while it waits to be written, as the intent write of the next submission carries
            # it (one write for both). So the places bound what a crash could leave in doubt in
            # the ledger as last written.
            if len(self._on_wire) >= self.options.parallel_submissions:
                return
            if len(self._open) + len(self._on_wire) >= self.window.limit:
                return
            work = heapq.heappop(self._queue)[-1]
            if self._first_request_at is None:
                self._first_request_at = now
            self._on_wire.add(work)
            self._spawn(self._submit(work))

    async def _submit(self, work: _Work) -> None:
        assert self._client is not None
        shard = work.shard
        self.ledger.intend(shard.shard_id, shard.group)
        try:
            await self._sync_ledger()
            payload = shard_payload(work.job.lines, shard)
            batch = await self._client.submit_jsonl(
                payload, len(shard.custom_ids), retry_rate_limited=False
            )
        except SubmitOutcomeUnknownError as exc:
            lost = len(self.report.in_doubt) < self.options.parallel_submissions
            if exc.status_code is not None or not lost:
                # The server answered, but not with a batch (every submit would do the same),
                # or answers keep getting lost: stop, naming the shard; the rerun sends it.
                raise SubmitOutcomeUnknownError(
                    f"shard {shard.shard_id}: {exc.message}",
                    status_code=exc.status_code,
                    operation=exc.operation,
                    hint="Rerun the job once the API answers normally: it names this shard and "
                    "sends it again (its batch may be paid twice)",
                ) from None
            # The answer was lost: the batch may or may not be queued, and the API cannot say.
            # Stopping the night would not help (a rerun could only send it again), so it is
            # sent again now, named in the log and the report; its intent stays in the ledger.
            self._on_wire.discard(work)
            work.in_doubt = True
            self.report.in_doubt.append(shard.shard_id)
            self._log(
                "warning",
                "shard %s: %s; it is sent again (its batch may be paid twice)",
                shard.shard_id,
                exc.message,
            )
            self._push(work)
            return
        except (TerminalApiError, TransientApiError) as exc:
            # Refused before it was queued (a bad key, a busy or failing server): nothing is
            # owed for it.
            self._on_wire.discard(work)
            if not work.in_doubt:
                self.ledger.discard(shard.shard_id)
            if isinstance(exc, TerminalApiError):
                raise
            self._push(work)
            self._submit_refused(exc)
            return
        now = time.monotonic()
        self._answered()
        self._submit_failures = 0
        self._on_wire.discard(work)
        work.batch_id = batch.id
        work.submitted_at = work.seen_open_at = now
        work.looks_open = 0
        self._open[shard.shard_id] = work
        self._schedule_poll(work, now)
        work.job.submitted += 1
        work.job.lines_sent += len(shard.custom_ids)
        self.report.batches_submitted += 1
        # Written with the next intent (one write for both), or by _maybe_settle within
        # SETTLE_AFTER_SECONDS; its place is free now (the write that carries it carries at
        # most as many new intents as there are free places).
        self.ledger.submitted(shard.shard_id, shard.group, batch.id)
        self._ids_recorded += 1
        if self._oldest_unsettled is None:
            self._oldest_unsettled = now

    async def _sync_ledger(self) -> None:
        """Make the ledger durable; every batch id recorded before the call is then settled."""
        recorded = self._ids_recorded
        await self.ledger.sync()
        if recorded > self._ids_settled:
            self._ids_settled = recorded
            if not self._ids_unwritten:
                self._oldest_unsettled = None

    @property
    def _ids_unwritten(self) -> int:
        return self._ids_recorded - self._ids_settled

    def _maybe_settle(self, now: float) -> None:
        if self._settling or not self._ids_unwritten:
            return
        stale = (
            self._oldest_unsettled is not None
            and now - self._oldest_unsettled >= SETTLE_AFTER_SECONDS
        )
        if stale or not self._queue:
            self._settling = True
            self._spawn(self._settle())

    async def _settle(self) -> None:
        try:
            await self._sync_ledger()
        finally:
            self._settling = False

    def _submit_refused(self, exc: TransientApiError) -> None:
        now = time.monotonic()
        if exc.status_code == 429:
            self._answered()
            self.report.rate_limited += 1
            open_now = len(self._open) + len(self._on_wire)
            if self.window.rate_limited(open_now, now):
                self._log(
                    "info",
                    "the API refused a batch with 429 at %d open; keeping at most %d open",
                    open_now,
                    self.window.limit,
                )
        else:
            self._connection_trouble(exc, now)
        self._submit_failures += 1
        backoff = min(30.0, 0.5 * 2 ** min(self._submit_failures - 1, 6))
        # Never sooner than the server asked; without an answer, back off exponentially.
        wait = backoff if exc.retry_after is None else exc.retry_after
        self._submit_pause_until = max(self._submit_pause_until, now + wait)

    # ------------------------------------------------------------------ polling

    def _schedule_poll(self, work: _Work, now: float) -> None:
        work.next_poll = self.schedule.next_poll(work.submitted_at, now, self._is_probe(work))
        self._push_poll(work)

    def _is_probe(self, work: _Work) -> bool:
        """Until a batch has finished, the oldest open one is looked at every poll interval:
        it tells when batches like it finish, and the others wait for that."""
        if self.schedule.expected is not None:
            return False
        return next(iter(self._open.values()), None) is work

    def _push_poll(self, work: _Work) -> None:
        if self.schedule.expected is None:
            free = self._is_probe(work)
        else:
            free = work.looks_open < FREE_LOOKS
        heap = self._first_polls if free else self._polls
        heapq.heappush(heap, (work.next_poll, next(self._seq), work))

    def _first_estimate(self, now: float) -> None:
        """The first batch finished: the open batches' next looks, backing off or waiting for
        the budget until now, become first looks when batches like them finish."""
        for work in self._open.values():
            if not work.busy:
                work.next_poll = max(now, self.schedule.first_look(work.submitted_at))
                work.looks_open = 0
                self._push_poll(work)

    def _poll_rate(self, now: float) -> float:
        """Polls per second the run may spend: a couple per finished batch and at least one
        per poll interval; before anything has finished, every open batch once per ten poll
        intervals. Which batches get them is the schedule's business (most overdue first)."""
        interval = self.options.poll_interval_seconds
        recent = self._completions
        if len(recent) < 2:
            return max(1.0, len(self._open) / 10.0) / interval
        finishing = len(recent) / max(now - recent[0], interval)
        return max(1.0 / interval, POLLS_PER_FINISHED_BATCH * finishing)

    def _start_polls(self, now: float) -> None:
        rate = self._poll_rate(now)
        burst = max(2.0, rate * self.options.poll_interval_seconds)
        self._poll_tokens = min(burst, self._poll_tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        self._next_poll_at = None
        # A batch's first looks, when batches like it usually finish and a step later, are
        # always allowed; the budget rations the looks at batches seen open longer.
        self._drain_polls(self._first_polls, now, None)
        self._drain_polls(self._polls, now, rate)

    def _drain_polls(
        self, heap: list[tuple[float, int, _Work]], now: float, rate: float | None
    ) -> None:
        while heap:
            when, _, work = heap[0]
            if work.busy or work.next_poll != when or work.shard.shard_id not in self._open:
                heapq.heappop(heap)  # superseded
                continue
            due = when
            if when <= now and rate is not None and self._poll_tokens < 1.0:
                due = now + (1.0 - self._poll_tokens) / rate
            if due > now or self._polls_running >= MAX_CONCURRENT_POLLS:
                if due > now:  # (a poll that ends wakes the loop anyway)
                    self._next_poll_at = min(self._next_poll_at or due, due)
                return
            heapq.heappop(heap)
            if rate is not None:
                self._poll_tokens -= 1.0
            work.busy = True
            self._polls_running += 1
            self._spawn(self._poll(work))

    def _poll_older(self, finished: _Work, now: float) -> None:
        """Batches are mostly finished in the order they were received: when one is done, the
        open batches sent before it are looked at next."""
        for work in self._open.values():
            if work.submitted_at >= finished.submitted_at:
                break
            if work.next_poll > now and not work.busy:
                work.next_poll = now
                self._push_poll(work)

    async def _poll(self, work: _Work) -> None:
        assert self._client is not None and work.batch_id is not None
        try:
            try:
                self.report.polls += 1
                batch = await self._client.get(work.batch_id)
                if batch.is_terminal:
                    self._finished(work, time.monotonic())
                    await self._record(work, batch)
                    return
            except NotFoundError:
                self._answered()
                self._forgotten(work)
                return
            except TransientApiError as exc:
                now = time.monotonic()
                self._connection_trouble(exc, now)
                work.next_poll = now + max(self.options.poll_interval_seconds, exc.retry_after or 0)
                self._push_poll(work)
                return
            self._answered()
            work.seen_open_at = time.monotonic()
            work.looks_open += 1
            self._schedule_poll(work, work.seen_open_at)
        finally:
            work.busy = False
            self._polls_running -= 1

    def _forgotten(self, work: _Work) -> None:
        # The API no longer knows the batch (expired, or an emulator without its database):
        # its lines were never delivered, so the shard is sent again.
        self._log(
            "warning",
            "batch %s of shard %s is unknown to the API; sending the shard again",
            work.batch_id,
            work.shard.shard_id,
        )
        self._open.pop(work.shard.shard_id, None)
        self.ledger.discard(work.shard.shard_id)
        work.batch_id = None
        self._push(work)

    def _finished(self, work: _Work, now: float) -> None:
        """The provider says the batch is done: its slot is free before its output is read."""
        self._open.pop(work.shard.shard_id, None)
        self.window.finished()
        if self._event is not None:
            # Refill the slot now, while the output downloads: otherwise the loop would wait
            # for this poll's task to end, a download and a decode later.
            self._event.set()
        known = self.schedule.expected is not None
        self.schedule.finished(
            max(0.0, work.seen_open_at - work.submitted_at), now - work.submitted_at
        )
        self._completions.append(now)
        if not known:
            self._first_estimate(now)
        self._poll_older(work, now)

    def _reopen(self, work: _Work) -> None:
        """The output could not be read this time: look at the batch again later."""
        self._open[work.shard.shard_id] = work
        now = time.monotonic()
        work.next_poll = now + self.options.poll_interval_seconds
        self._push_poll(work)

    async def _record(self, work: _Work, batch: Batch) -> None:
        assert self._client is not None
        shard = work.shard
        if batch.status is BatchStatus.FAILED:
            message = f"batch {batch.id} ended 'failed'; the line will be retried in a new batch"
            rows = [_error_row(c, "batch_failed", message, shard.attempt) for c in shard.custom_ids]
        else:
            try:
                payload = await self._client.output_bytes(batch.id)
            except NotFoundError:
                self._answered()
                self._forgotten(work)
                return
            except TransientApiError:
                self._reopen(work)
                raise
            rows, tokens = decode_output_bytes(shard, self._model_of(work.job), payload)
            work.job.prompt_tokens += tokens
        self._answered()
        self._shard_recorded(work, rows)

    # ------------------------------------------------------------------ health and progress

    def _answered(self) -> None:
        self._ever_answered = True

    def _connection_trouble(self, exc: BatchApiError, now: float) -> None:
        """No connection, or only server errors, from an API that never answered yet."""
        if exc.status_code == 429:
            self._answered()  # busy is an answer: waiting is right
            return
        if not self._ever_answered:
            self._last_trouble = exc

    def _check_reachable(self, now: float) -> None:
        """Fail early, before anything is paid, if the API has never answered in this run."""
        if self._ever_answered or self._first_request_at is None or self._last_trouble is None:
            return
        if now - self._first_request_at >= self.options.unreachable_after_seconds:
            trouble = self._last_trouble
            raise ApiUnreachableError(
                f"no request to {self.api.base_url} has succeeded in "
                f"{now - self._first_request_at:.0f} s of trying ({trouble.message}); nothing "
                "was submitted",
                hint="Check that batch_api names the right URL and port, that the server is up "
                "and reachable from this machine (proxy, firewall, VPN), then rerun",
                operation=trouble.operation,
            )

    def progress(self) -> Progress:
        now = time.monotonic()
        self._samples.append((now, self._lines_done))
        eta = None
        first_time, first_done = self._samples[0]
        remaining = self.options.total_lines - self._lines_done
        if now - first_time > 1.0 and self._lines_done > first_done and remaining > 0:
            rate = (self._lines_done - first_done) / (now - first_time)
            eta = remaining / rate
        elif remaining <= 0:
            eta = 0.0
        return Progress(
            batches_done=self._batches_done,
            batches_open=len(self._open) + len(self._on_wire),
            batches_queued=len(self._queue),
            lines_done=self._lines_done,
            lines_total=self.options.total_lines,
            rate_limited=self.report.rate_limited,
            window=self.window.limit,
            eta_seconds=eta,
        )

    def _maybe_report(self, now: float) -> None:
        every = max(PROGRESS_EVERY_SECONDS, self.options.poll_interval_seconds)
        if now - self._last_progress < every:
            return
        self._last_progress = now
        snapshot = self.progress()
        if self.on_progress is not None and not self._publishing:
            # Beside the loop, not in it: a Prefect API far away takes a while to answer, and
            # the window is refilled meanwhile. One update at a time; a slow one skips the next.
            self._publishing = True
            self._spawn(self._publish(self.on_progress, snapshot))
        if self.on_status is not None and now - self._last_status >= STATUS_EVERY_SECONDS:
            self._last_status = now
            self.on_status(snapshot)

    async def _publish(self, on_progress: Callable[[Progress], None], snapshot: Progress) -> None:
        try:
            await asyncio.to_thread(on_progress, snapshot)
        except Exception as exc:  # progress is for people; it must not stop the run
            self._log("debug", "progress not published: %s", exc)
        finally:
            self._publishing = False

    def _log(self, level: str, message: str, *args: Any) -> None:
        if self.logger is not None:
            getattr(self.logger, level)(message, *args)


def _retry_failures(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry the engine after a failure that may pass (an object store or API that refused for
    a while), not after a timeout, a terminal API error or a lost submit answer."""
    try:
        state.result()
    except (BatchWaitTimeout, TerminalApiError, SubmitOutcomeUnknownError):
        return False
    except BatchApiError as exc:
        return exc.retryable
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(
    name="run-batches",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=_retry_failures,
)
def run_batches(
    engine: BatchEngine,
    on_progress: Callable[[Progress], None] | None = None,
) -> EngineReport:
    """Drive every batch of the run: submit within the window, poll, fetch, decode."""
    logger = get_run_logger()
    engine.logger = logger
    engine.on_progress = on_progress
    engine.on_status = lambda progress: logger.info("waiting: %s", progress.describe())
    if engine.ledger.found:
        known = sum(1 for e in engine.ledger.found.values() if e.batch_id is not None)
        logger.info(
            "resuming: %d batch(es) submitted by an earlier run will be reattached when their "
            "groups are read",
            known,
        )
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        report = runner.run(engine.run())
    logger.info("done: %s", engine.progress().describe())
    return report
