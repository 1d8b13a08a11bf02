"""Tests of batchapi.client, over real HTTP against the emulator on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from batchapi.client import (
    AsyncBatchApiClient,
    AuthenticationError,
    BadRequestError,
    BatchApiClient,
    InvalidBatchError,
    NotFoundError,
    SubmitOutcomeUnknownError,
    TerminalApiError,
    TransientApiError,
    parse_batch,
    parse_output,
    validate_lines,
)
from batchapi.emulator.runner import RunningEmulator
from batchapi.models import (
    Batch,
    BatchLimits,
    BatchStatus,
    ClassifyResult,
    ExtractResult,
    OutputLine,
    RequestLine,
    SummarizeResult,
)

SECRET = "sk-test-do-not-leak-0123456789"

TEXT = (
    "Acme Corp reported quarterly revenue of $12 million on 3 March 2026. "
    "Chief executive Jane Smith said growth came from Europe. Customers in Berlin asked "
    "for a refund after a double charge on their invoice."
)


def extract_line(custom_id: str = "x1", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "body": {"model": "extract", "text": TEXT, "entities": {"person": "a name"}, **body},
    }


def summarize_line(custom_id: str = "s1", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {"model": "summarize", "text": TEXT, **body}}


def classify_line(custom_id: str = "c1", **body: Any) -> dict[str, Any]:
    labels = [
        {"name": "billing", "rubric": "Is this about a payment or charge?"},
        {"name": "other", "rubric": "Is this unrelated to payments?"},
    ]
    return {
        "custom_id": custom_id,
        "body": {"model": "classify", "text": TEXT, "labels": labels, **body},
    }


def mixed_lines(n: int = 3) -> list[dict[str, Any]]:
    makers = (extract_line, summarize_line, classify_line)
    return [makers[i % 3](f"doc-{i}") for i in range(n)]


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that also records what it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DroppingServer:
    """A TCP peer that reads each request and closes the connection without answering:
    the 'answer lost after the body was sent' case, which no well-behaved server produces."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def dropping_server() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- validation


def problems_of(lines: Any, limits: BatchLimits | None = None) -> list[str]:
    with pytest.raises(InvalidBatchError) as info:
        validate_lines(lines, limits)
    return info.value.problems


def test_validate_accepts_models_dicts_and_a_single_line() -> None:
    lines = [RequestLine.model_validate(extract_line("a")), summarize_line("b")]
    validated = validate_lines(lines)
    assert [line.custom_id for line in validated] == ["a", "b"]
    assert all(isinstance(line, RequestLine) for line in validated)
    assert [line.custom_id for line in validate_lines(classify_line("one"))] == ["one"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"custom_id": "u", "body": {"model": "translate", "text": "hi"}}, "'translate'"),
        ({"custom_id": "m", "body": {"model": "summarize"}}, "body.text is missing"),
        ({"custom_id": "b", "body": {"model": "summarize", "text": "  "}}, "must not be blank"),
        (extract_line("e", entities={}), "body.entities must not be empty"),
        (classify_line("l", labels=[]), "body.labels must not be empty"),
        (summarize_line("x" * 65), "custom_id is too long"),
        ({"body": {"model": "summarize", "text": "hi"}}, "custom_id is missing"),
    ],
)
def test_validate_names_line_and_fix(line: dict[str, Any], expected: str) -> None:
    problems = problems_of([summarize_line("ok"), line])
    assert len(problems) == 1
    assert problems[0].startswith("line 1")
    assert expected in problems[0]


def test_validate_reports_every_problem_with_custom_id() -> None:
    lines = [
        summarize_line("dup"),
        summarize_line("dup"),
        {"custom_id": "bad", "body": {"model": "nope", "text": "t"}},
    ]
    with pytest.raises(InvalidBatchError) as info:
        validate_lines(lines)
    message = str(info.value)
    assert "line 1 (custom_id 'dup'): duplicate custom_id (first used on line 0)" in message
    assert "line 2 (custom_id 'bad')" in message
    assert "extract, summarize, classify" in message
    assert isinstance(info.value, ValueError)


def test_validate_enforces_limits_and_empty_batch() -> None:
    assert "empty" in problems_of([])[0]
    lines = mixed_lines(4)
    assert "the limit is 3" in problems_of(lines, BatchLimits(max_lines=3))[0]
    big = [summarize_line(f"s{i}", text="word " * 400) for i in range(2)]
    assert "bytes" in problems_of(big, BatchLimits(max_bytes=2_000))[0]
    assert len(validate_lines(mixed_lines(50))) == 50  # the default limit is revision B's 50


def test_invalid_batch_error_survives_pickling() -> None:
    with pytest.raises(InvalidBatchError) as info:
        validate_lines([])
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.problems == info.value.problems
    assert str(copy) == str(info.value)


# --------------------------------------------------------------------------- parsing


def test_revision_a_payloads_decode() -> None:
    # The parsing functions the client uses for every answer; the emulator speaking revision
    # A end to end is in emulator/test_revision_a.py.
    created = parse_batch(b'{"batch_id": "batch-abc123", "status": "queued", "total_count": 2}')
    assert created.id == "batch-abc123"
    assert created.status is BatchStatus.VALIDATING
    assert created.request_counts.total == 2
    status = parse_batch(
        {
            "batch_id": "batch-abc123",
            "status": "processing",
            "total_count": 2,
            "completed_count": 1,
            "failed_count": 0,
        }
    )
    assert status.status is BatchStatus.IN_PROGRESS
    assert status.request_counts.completed == 1
    done = parse_batch('{"batch_id": "batch-abc123", "status": "completed", "total_count": 2}')
    assert done.is_terminal


def test_output_tolerates_minimal_and_openai_error_lines() -> None:
    content = json.dumps({"summary": "Revenue grew.", "input_chars": 20, "output_chars": 13})
    minimal = {
        "custom_id": "a1",
        "response": {
            "body": {"model": "summarize", "choices": [{"message": {"content": content}}]}
        },
    }
    failed = {"custom_id": "a2", "response": None, "error": {"code": "x", "message": "bad"}}
    openai_failed = {
        "custom_id": "a3",
        "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}},
        "error": None,
    }
    garbled = {"custom_id": "a4", "response": {"status_code": 200, "body": {"model": "x"}}}
    payload = "\r\n".join(json.dumps(x) for x in (minimal, failed, openai_failed, garbled))
    lines = {line.custom_id: line for line in parse_output(payload + "\n\n")}
    assert lines["a1"].ok
    assert isinstance(lines["a1"].decode(), SummarizeResult)
    assert not lines["a2"].ok and lines["a2"].error.message == "bad"
    assert lines["a3"].error.code == "rate_limited" and "slow down" in lines["a3"].error.message
    assert lines["a4"].error.code == "server_error"
    with pytest.raises(ValueError):
        parse_output('{"response": null, "error": {"code": "x", "message": "y"}}')


# --------------------------------------------------------------------------- key hygiene


def test_repr_and_bad_keys_never_show_the_key() -> None:
    client = BatchApiClient("http://127.0.0.1:1/v1/", SECRET)
    assert SECRET not in repr(client)
    assert "api_key='********'" in repr(client)
    assert client.base_url == "http://127.0.0.1:1"
    client.close()
    with BatchApiClient("http://127.0.0.1:1", SecretStr(SECRET)) as from_secret:
        assert SECRET not in repr(from_secret)
        assert from_secret._headers()["x-api-key"] == SECRET
    with pytest.raises(ValueError) as info:
        BatchApiClient("http://127.0.0.1:1", "sk-bad key\x00")
    assert "sk-bad" not in str(info.value)
    with pytest.raises(ValueError):
        BatchApiClient("ftp://example.com", SECRET)


def test_errors_survive_pickling() -> None:
    error = TransientApiError("busy", status_code=503, operation="GET /v1/x", retry_after=2.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status_code, copy.retry_after, copy.retryable) == (503, 2.0, True)
    assert str(copy) == str(error)


# --------------------------------------------------------------------------- transport faults


def test_connection_refused_is_transient_after_retries() -> None:
    transport = CountingTransport()
    client = BatchApiClient(
        f"http://127.0.0.1:{closed_port()}",
        SECRET,
        max_retries=2,
        backoff_base=0.001,
        transport=transport,
    )
    with client, pytest.raises(TransientApiError) as info:
        client.submit(mixed_lines(2))  # nothing was sent, so even a submit is retried
    error = info.value
    assert error.retryable and error.status_code is None and error.attempts == 3
    assert not isinstance(error, SubmitOutcomeUnknownError)
    assert len(transport.sent) == 3
    assert SECRET not in str(error) and SECRET not in repr(error)


def test_lost_submit_answer_is_not_retried(dropping_server: DroppingServer) -> None:
    with BatchApiClient(
        f"http://127.0.0.1:{dropping_server.port}", SECRET, max_retries=3, backoff_base=0.001
    ) as client:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            client.submit(mixed_lines(2))
        assert dropping_server.connections == 1
        assert isinstance(info.value, TransientApiError) and not info.value.retryable
        assert "resubmit" in str(info.value)
        # A GET is idempotent: the same failure is retried.
        with pytest.raises(TransientApiError) as get_info:
            client.get("batch_1")
        assert not isinstance(get_info.value, SubmitOutcomeUnknownError)
        assert dropping_server.connections == 1 + 4


def test_async_client_maps_transport_failures_like_the_sync_one(
    dropping_server: DroppingServer,
) -> None:
    """The async client (aiohttp) and the sync one (httpx) type the same failures alike."""

    async def scenario() -> tuple[BaseException, BaseException, BaseException]:
        refused = AsyncBatchApiClient(
            f"http://127.0.0.1:{closed_port()}", SECRET, max_retries=2, backoff_base=0.001
        )
        async with refused:
            with pytest.raises(TransientApiError) as no_connection:
                await refused.submit(mixed_lines(2))
        async with AsyncBatchApiClient(
            f"http://127.0.0.1:{dropping_server.port}", SECRET, max_retries=3, backoff_base=0.001
        ) as client:
            with pytest.raises(SubmitOutcomeUnknownError) as lost:
                await client.submit(mixed_lines(2))
            assert dropping_server.connections == 1
            with pytest.raises(TransientApiError) as lost_get:
                await client.get("batch_1")
        return no_connection.value, lost.value, lost_get.value

    no_connection, lost, lost_get = asyncio.run(scenario())
    assert isinstance(no_connection, TransientApiError) and no_connection.retryable
    assert not isinstance(no_connection, SubmitOutcomeUnknownError)
    assert no_connection.attempts == 3 and "cannot connect" in str(no_connection)
    assert isinstance(lost, TransientApiError) and not lost.retryable
    assert "resubmit" in str(lost) and lost.operation == "POST /v1/batches"
    # A GET is idempotent: the same failure is retried.
    assert not isinstance(lost_get, SubmitOutcomeUnknownError) and lost_get.attempts == 4
    # (aiohttp itself may try an idempotent GET once more on a dropped connection; never a POST.)
    assert dropping_server.connections >= 1 + 4
    for error in (no_connection, lost, lost_get):
        assert SECRET not in str(error) and SECRET not in repr(error)


def test_invalid_batch_costs_no_request() -> None:
    transport = CountingTransport()
    client = BatchApiClient(f"http://127.0.0.1:{closed_port()}", transport=transport)
    with client, pytest.raises(InvalidBatchError):
        client.submit([summarize_line("a"), {"custom_id": "b", "body": {"model": "?"}}])
    assert transport.sent == []


def test_backoff_honours_retry_after_and_caps() -> None:
    client = BatchApiClient("http://127.0.0.1:1", max_retries=3, backoff_base=1, backoff_max=5)
    busy = TransientApiError("busy", status_code=429, retry_after=2.5)
    assert client._delay(busy, 0) == 2.5
    # Never sooner than asked: a wait beyond backoff_max goes back to the caller with the error.
    assert client._delay(TransientApiError("busy", retry_after=60), 0) is None
    delays = [client._delay(TransientApiError("x"), 2) for _ in range(50)]
    assert all(0 <= d <= 4 for d in delays) and len(set(delays)) > 1  # full jitter
    assert client._delay(busy, 3) is None  # retries exhausted
    assert client._delay(NotFoundError("gone", status_code=404), 0) is None
    client.close()


# --------------------------------------------------------------------------- against the emulator


def stats(emulator: RunningEmulator) -> dict[str, int]:
    response = httpx.get(f"{emulator.base_url}/_emulator/stats", timeout=5)
    response.raise_for_status()
    return response.json()


def client_for(emulator: RunningEmulator, **options: Any) -> BatchApiClient:
    options.setdefault("backoff_base", 0.001)
    return BatchApiClient(emulator.base_url, emulator.api_key, **options)


def wait_done(client: BatchApiClient, batch_id: str, timeout: float = 10.0) -> Batch:
    deadline = time.monotonic() + timeout
    while not (batch := client.get(batch_id)).is_terminal:
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.01)
    return batch


def check_results(lines: list[OutputLine], expected: list[dict[str, Any]]) -> None:
    by_id = {line.custom_id: line for line in lines}
    assert set(by_id) == {item["custom_id"] for item in expected}
    result_types = {
        "extract": ExtractResult,
        "summarize": SummarizeResult,
        "classify": ClassifyResult,
    }
    for item in expected:
        line = by_id[item["custom_id"]]
        assert line.ok, line.error
        assert isinstance(line.decode(item["body"]["model"]), result_types[item["body"]["model"]])


def test_round_trip_with_mixed_models(emulator: RunningEmulator) -> None:
    lines = mixed_lines(6)
    with client_for(emulator) as client:
        created = client.submit(lines)
        assert created.id and created.request_counts.total == 6
        assert created.status in (
            BatchStatus.VALIDATING,
            BatchStatus.IN_PROGRESS,
            BatchStatus.COMPLETED,
        )
        done = wait_done(client, created.id)
        assert done.status is BatchStatus.COMPLETED
        assert done.request_counts.completed == 6
        output = client.output(created.id)
        assert isinstance(output, Iterator)
        check_results(list(output), lines)


def test_single_line_submit(emulator: RunningEmulator) -> None:
    with client_for(emulator) as client:
        created = client.submit(classify_line("only"))
        assert created.request_counts.total == 1
        wait_done(client, created.id)
        (line,) = client.output(created.id)
        assert line.custom_id == "only"
        assert line.decode().top_label in ("billing", "other")


def test_async_round_trip_with_retries(emulator_factory: Any) -> None:
    emulator = emulator_factory(http_fault_rate=0.5, seed=4)
    lines = mixed_lines(3)

    async def scenario() -> list[OutputLine]:
        async with AsyncBatchApiClient(
            emulator.base_url, emulator.api_key, max_retries=20, backoff_base=0.001
        ) as client:
            assert "********" in repr(client)
            created = await client.submit(lines)
            while not (await client.get(created.id)).is_terminal:
                await asyncio.sleep(0.01)
            with pytest.raises(NotFoundError):
                await client.get("batch_unknown")
            return await client.output(created.id)

    check_results(asyncio.run(scenario()), lines)
    assert stats(emulator)["http_faults_injected"] > 0


def test_wrong_or_missing_key_is_an_authentication_error(
    emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        BatchApiClient(emulator.base_url, SECRET) as client,
        pytest.raises(AuthenticationError) as info,
    ):
        client.submit(mixed_lines(2))
    error = info.value
    assert error.status_code == 401 and not error.retryable
    assert isinstance(error, TerminalApiError)
    assert "x-api-key" in error.message  # the server's own detail
    assert "BATCH_API_KEY" in str(error)
    for text in (str(error), repr(error), caplog.text):
        assert SECRET not in text
    with BatchApiClient(emulator.base_url) as client, pytest.raises(AuthenticationError) as info:
        client.get("batch_x")
    assert "No API key is configured" in str(info.value)
    assert stats(emulator)["batches_created"] == 0


def test_key_never_logged_on_success(
    emulator_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = emulator_factory(api_key=SECRET, http_fault_rate=0.5, seed=3)
    caplog.set_level(logging.DEBUG)
    with client_for(emulator, max_retries=20) as client:
        batch = client.submit(mixed_lines(2))
        wait_done(client, batch.id)
        list(client.output(batch.id))
    assert "retry" in caplog.text  # retries are logged ...
    assert SECRET not in caplog.text  # ... without the key, even at debug level


def test_unknown_batch_is_not_found(emulator: RunningEmulator) -> None:
    with client_for(emulator) as client:
        with pytest.raises(NotFoundError) as info:
            client.get("batch_does_not_exist")
        assert info.value.status_code == 404 and "batch_does_not_exist" in info.value.message
        with pytest.raises(NotFoundError):
            client.output("batch_does_not_exist")


def test_output_before_ready_is_not_found(emulator_factory: Any) -> None:
    emulator = emulator_factory(latency=30)
    with client_for(emulator) as client:
        batch = client.submit(mixed_lines(2))
        with pytest.raises(NotFoundError) as info:
            client.output(batch.id)
        assert "poll" in str(info.value)
        assert not client.get(batch.id).is_terminal


def test_server_rejection_carries_server_detail(emulator_factory: Any) -> None:
    emulator = emulator_factory(max_lines=3)
    # Client-side limits larger than the server's let the request through to the server.
    client = client_for(emulator, limits=BatchLimits(max_lines=10))
    with client, pytest.raises(BadRequestError) as info:
        client.submit(mixed_lines(4))
    error = info.value
    assert error.status_code == 400 and not error.retryable
    assert "the limit is 3 lines" in error.message
    assert stats(emulator)["batches_created"] == 0


def test_invalid_batch_never_reaches_the_server(emulator: RunningEmulator) -> None:
    transport = CountingTransport()
    with client_for(emulator, transport=transport) as client:
        for bad in (
            [],
            mixed_lines(51),
            [summarize_line("a"), summarize_line("a")],
            [{"custom_id": "m", "body": {"model": "translate", "text": "hola"}}],
            [classify_line("c", labels=[])],
        ):
            with pytest.raises(InvalidBatchError):
                client.submit(bad)
    assert transport.sent == []
    assert stats(emulator)["batches_created"] == 0


def test_transient_faults_are_retried(emulator_factory: Any) -> None:
    # With this seed the very first request (the submit) is answered with a fault.
    emulator = emulator_factory(http_fault_rate=0.5, seed=7)
    transport = CountingTransport()
    lines = mixed_lines(3)
    with client_for(emulator, max_retries=20, transport=transport) as client:
        batch = client.submit(lines)
        wait_done(client, batch.id)
        check_results(list(client.output(batch.id)), lines)
    counters = stats(emulator)
    assert counters["http_faults_injected"] > 0
    assert counters["batches_created"] == 1  # retried submits never queued a second batch
    assert [method for method, _ in transport.sent].count("POST") >= 2


def test_without_retries_a_transient_error_surfaces(emulator_factory: Any) -> None:
    emulator = emulator_factory(http_fault_rate=1.0, seed=1)
    client = client_for(emulator, max_retries=0)
    with client, pytest.raises(TransientApiError) as info:
        client.get("batch_any")
    error = info.value
    assert error.retryable and error.attempts == 1
    assert error.status_code in (429, 500, 503)
    assert error.message == "injected fault"
    if error.status_code == 429:
        assert error.retry_after == 0
