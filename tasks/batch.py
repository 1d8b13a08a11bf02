"""Submit shards, wait for their batches, fetch and decode the output.

`run_shards` is one Prefect task that drives many batches at once with async HTTP: it keeps
at most `max_in_flight` batches open, polls every open batch in one loop, and records each
finished batch's decoded lines under `_state/`. Each call works only from the manifest, so it
can stop at any point and be called again: a batch already submitted is reattached, never
submitted twice.

Waiting is visible in the Prefect UI: when batches are still open at the end of a polling
window the task raises `BatchesStillOpen` and Prefect retries it after `poll_interval`
(state "AwaitingRetry"). Transient API failures are retried the same way; terminal ones
(400, 401, 404) fail at once with the server's message.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from batchapi.client import (
    AsyncBatchApiClient,
    BatchApiError,
    NotFoundError,
    SubmitOutcomeUnknownError,
    TerminalApiError,
)
from batchapi.models import (
    Batch,
    BatchLimits,
    BatchStatus,
    ClassifyResult,
    DecodeError,
    ExtractResult,
    OutputLine,
    SummarizeResult,
)
from tasks.shard import Shard
from tasks.state import BatchRecord, BatchStatusValue, RunState, results_table

# What the results store keeps of each domain result: the fields the output is built from.
STORED_FIELDS: dict[type, Any] = {
    ExtractResult: {"entities": {"__all__": {"text", "type", "confidence", "start", "end"}}},
    SummarizeResult: {"summary"},
    ClassifyResult: {"top_label", "scores"},
}

# Every this many polling rounds, every open batch is polled, not only the oldest ones.
FULL_SWEEP_EVERY = 10

# Per-line error codes (the API's own plus ours) that a new attempt may fix.
RETRYABLE_LINE_CODES = frozenset({"server_error", "rate_limited", "batch_failed", "missing_output"})


class BatchesStillOpen(Exception):
    """Raised at the end of a polling window so Prefect retries (and shows) the wait."""

    def __init__(self, open_batches: list[str]) -> None:
        self.open_batches = open_batches
        shown = ", ".join(open_batches[:10]) + (" ..." if len(open_batches) > 10 else "")
        super().__init__(f"{len(open_batches)} batch(es) still open: {shown}")


class BatchWaitTimeout(Exception):
    """The run's deadline passed with batches still open. They stay in the manifest; the next
    run of the same job reattaches to them instead of submitting again."""

    def __init__(self, open_batches: list[str], timeout_seconds: float) -> None:
        self.open_batches = open_batches
        super().__init__(
            f"timed out after {timeout_seconds:.0f}s with {len(open_batches)} batch(es) open: "
            f"{', '.join(open_batches)}. Rerun the same job to pick them up (nothing is "
            "resubmitted), or raise timeout_seconds."
        )


@dataclass(frozen=True)
class ApiSettings:
    """What a task needs to reach the API; picklable, so tasks can run on other processes.

    The key stays a `SecretStr` until the client puts it in a header."""

    base_url: str
    api_key: SecretStr | None = field(default=None, repr=False)
    timeout_seconds: float = 30.0
    max_lines: int = 50
    max_bytes: int = 10_000_000

    def __repr__(self) -> str:
        return f"ApiSettings(base_url={self.base_url!r}, api_key='********')"

    def client(self) -> AsyncBatchApiClient:
        return AsyncBatchApiClient(
            self.base_url,
            self.api_key,
            timeout=self.timeout_seconds,
            limits=BatchLimits(max_lines=self.max_lines, max_bytes=self.max_bytes),
        )


@dataclass
class RoundReport:
    shards: int
    submitted: int
    reattached: int
    lines_ok: int
    lines_failed: int
    prompt_tokens: int


def _retry_wait_or_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the task for open batches and transient API errors, not for terminal ones."""
    try:
        state.result()
    except BatchesStillOpen:
        return True
    except TerminalApiError:
        return False
    except SubmitOutcomeUnknownError:
        return False
    except BatchApiError as exc:
        return exc.retryable
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


def _error_row(custom_id: str, code: str, message: str, attempt: int) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "result": None,
        "error": message,
        "error_code": code,
        "attempts": attempt,
    }


def decode_output(
    shard: Shard, models: dict[str, str], lines: list[OutputLine]
) -> list[dict[str, Any]]:
    """One result row per custom id of the shard, matched on custom_id (never on order)."""
    by_id = {line.custom_id: line for line in lines}
    rows: list[dict[str, Any]] = []
    for custom_id in shard.custom_ids:
        line = by_id.get(custom_id)
        if line is None:
            rows.append(
                _error_row(
                    custom_id, "missing_output", "line missing from batch output", shard.attempt
                )
            )
        elif line.error is not None:
            rows.append(_error_row(custom_id, line.error.code, line.error.message, shard.attempt))
        else:
            try:
                result = line.decode(models.get(custom_id))
            except DecodeError as exc:
                rows.append(_error_row(custom_id, "decode_error", str(exc), shard.attempt))
                continue
            rows.append(
                {
                    "custom_id": custom_id,
                    "result": result.model_dump_json(include=STORED_FIELDS[type(result)]),
                    "error": None,
                    "error_code": None,
                    "attempts": shard.attempt,
                }
            )
    return rows


def _line_models(payload: bytes) -> tuple[list[dict[str, Any]], dict[str, str]]:
    items = [json.loads(line) for line in payload.splitlines() if line.strip()]
    return items, {item["custom_id"]: item["body"]["model"] for item in items}


class _Driver:
    """The polling loop over one round's shards."""

    def __init__(
        self,
        shards: list[Shard],
        state: RunState,
        client: AsyncBatchApiClient,
        max_in_flight: int,
    ) -> None:
        self.shards = {s.shard_id: s for s in shards}
        self.state = state
        self.client = client
        self.max_in_flight = max_in_flight
        self.logger = get_run_logger()
        self.records: dict[str, BatchRecord] = {}
        self.reattached = 0
        for shard in shards:
            record = state.load_batch(shard.shard_id)
            if record is None:
                record = BatchRecord(
                    shard.shard_id, shard.group, shard.attempt, len(shard.custom_ids)
                )
            elif record.batch_id is not None:
                self.reattached += 1
            self.records[shard.shard_id] = record

    def open_ids(self) -> list[str]:
        return [r.batch_id for r in self.records.values() if r.is_open and r.batch_id]

    def unfinished(self) -> list[BatchRecord]:
        return [r for r in self.records.values() if r.status != BatchStatusValue.RECORDED]

    async def _submit(self, record: BatchRecord) -> None:
        items, _ = _line_models(self.state.read_shard(record.shard_id))
        if record.status == BatchStatusValue.SUBMITTING:
            self.logger.warning(
                "shard %s was being submitted when an earlier run stopped; the API cannot "
                "say whether that request arrived, so it is submitted again",
                record.shard_id,
            )
        record.status = BatchStatusValue.SUBMITTING
        self.state.save_batch(record)
        batch = await self.client.submit(items)
        record.batch_id = batch.id
        record.status = BatchStatusValue.SUBMITTED
        record.api_status = batch.status.value
        record.submitted_at = time.time()
        self.state.save_batch(record)

    async def _record(self, record: BatchRecord, batch: Batch) -> None:
        shard = self.shards[record.shard_id]
        payload = self.state.read_shard(record.shard_id)
        _, models = _line_models(payload)
        if batch.status is BatchStatus.FAILED:
            message = f"batch {batch.id} ended 'failed'; the line will be retried in a new batch"
            rows = [_error_row(c, "batch_failed", message, shard.attempt) for c in shard.custom_ids]
        else:
            output = await self.client.output(batch.id)
            rows = decode_output(shard, models, output)
            record.prompt_tokens = sum(
                line.response.body.usage.prompt_tokens
                for line in output
                if line.response is not None and line.response.body.usage is not None
            )
        self.state.write_results(record.shard_id, results_table(rows))
        record.status = BatchStatusValue.RECORDED
        record.api_status = batch.status.value
        record.completed = batch.request_counts.completed
        record.failed = batch.request_counts.failed
        self.state.save_batch(record)

    async def _poll(self, record: BatchRecord) -> bool:
        assert record.batch_id is not None
        try:
            batch = await self.client.get(record.batch_id)
        except NotFoundError:
            # The API no longer knows the batch (expired, or an emulator without its
            # database): its lines were never delivered, so the shard is submitted again.
            self.logger.warning(
                "batch %s of shard %s is unknown to the API; submitting the shard again",
                record.batch_id,
                record.shard_id,
            )
            record.batch_id, record.status = None, "lost"
            self.state.save_batch(record)
            return False
        if batch.status.value != record.api_status:
            record.api_status = batch.status.value
            self.state.save_batch(record)
        if batch.is_terminal:
            await self._record(record, batch)
            return True
        return False

    async def _poll_round(self, sweep: bool) -> list[bool]:
        """Poll open batches; True for each that finished.

        A sweep polls every open batch at once. Between sweeps, batches are polled oldest
        first and the round stops at the first one still running: a backend mostly finishes
        batches in the order it received them, and this keeps a round to a request or two
        however many batches are open, instead of one request per open batch.
        """
        opened = sorted(
            (r for r in self.unfinished() if r.batch_id is not None),
            key=lambda r: r.submitted_at or 0.0,
        )
        if sweep:
            return list(await asyncio.gather(*(self._poll(r) for r in opened)))
        finished: list[bool] = []
        for record in opened:
            finished.append(await self._poll(record))
            if not finished[-1]:
                break
        return finished

    async def run(
        self, poll_interval: float, window_end: float, deadline: float, timeout: float
    ) -> None:
        iteration = 0
        while True:
            unfinished = self.unfinished()
            if not unfinished:
                return
            # Submit only shards never submitted, up to the in-flight limit.
            open_count = sum(1 for r in unfinished if r.batch_id is not None)
            fresh = [r for r in unfinished if r.batch_id is None]
            slots = max(0, self.max_in_flight - open_count)
            # One submission at a time, each recorded as soon as it is answered: a crash can
            # then lose at most the answer to the single request on the wire (the API has no
            # idempotency key or batch listing to recover it; see README, "Resume").
            for record in fresh[:slots]:
                await self._submit(record)
            finished = await self._poll_round(sweep=iteration % FULL_SWEEP_EVERY == 0)
            iteration += 1
            if not self.unfinished():
                return
            now = time.time()
            if now >= deadline:
                raise BatchWaitTimeout(self.open_ids(), timeout)
            if now >= window_end:
                raise BatchesStillOpen(self.open_ids())
            if not any(finished):
                await asyncio.sleep(min(poll_interval, max(0.0, deadline - now)))


@task(
    name="run-batches",
    cache_policy=NO_CACHE,
    retry_condition_fn=_retry_wait_or_transient,
    retry_jitter_factor=0.2,
)
def run_shards(
    shards: list[Shard],
    state: RunState,
    api: ApiSettings,
    max_in_flight: int,
    poll_interval_seconds: float,
    deadline: float,
    timeout_seconds: float,
    polling_window_seconds: float = 60.0,
    run_started: float = 0.0,
) -> RoundReport:
    """Submit what was never submitted, wait for every batch, record the decoded output.

    The report counts batches this run submitted (at or after `run_started`, wall clock)
    apart from batches an earlier run submitted and this one reattached to.
    """
    logger = get_run_logger()
    window_end = time.time() + polling_window_seconds

    async def drive() -> _Driver:
        async with api.client() as client:
            driver = _Driver(shards, state, client, max_in_flight)
            if driver.reattached:
                logger.info("reattached to %d batch(es) submitted earlier", driver.reattached)
            await driver.run(poll_interval_seconds, window_end, deadline, timeout_seconds)
            return driver

    driver = asyncio.run(drive())
    records = [r for r in driver.records.values() if r.submitted_at is not None]
    return RoundReport(
        shards=len(shards),
        submitted=sum(r.submitted_at >= run_started for r in records),
        reattached=sum(r.submitted_at < run_started for r in records),
        lines_ok=sum(r.completed for r in records),
        lines_failed=sum(r.failed for r in records),
        prompt_tokens=sum(r.prompt_tokens for r in records),
    )
