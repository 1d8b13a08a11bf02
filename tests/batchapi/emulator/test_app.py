"""The emulator over real HTTP on loopback: every status code, the batch lifecycle, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.runner import RunningEmulator
from batchapi.models import (
    Batch,
    BatchStatus,
    ClassifyBody,
    ClassifyResult,
    ExtractBody,
    ExtractResult,
    Label,
    OutputLine,
    RequestLine,
    SummarizeBody,
    SummarizeResult,
    approx_tokens,
    encode_jsonl,
)

TEXT = (
    "Acme Corp reported quarterly revenue of 12 million dollars on Monday. "
    "Chief executive Jane Smith said the growth came from new customers in Berlin. "
    "The company also apologised for a double charge that affected some invoices."
)
LABELS = [
    Label(name="billing", rubric="Is this about a payment or charge?"),
    Label(name="other", rubric="Is this unrelated to payments?"),
]

Waiter = Callable[..., Batch]


def extract_line(custom_id: str, text: str = TEXT) -> RequestLine:
    body = ExtractBody(text=text, entities={"person": "a person's name"})
    return RequestLine(custom_id=custom_id, body=body)


def summarize_line(custom_id: str, text: str = TEXT) -> RequestLine:
    return RequestLine(custom_id=custom_id, body=SummarizeBody(text=text, max_tokens=60))


def classify_line(custom_id: str, text: str = TEXT) -> RequestLine:
    return RequestLine(custom_id=custom_id, body=ClassifyBody(text=text, labels=LABELS))


def raw_line(custom_id: str, body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return {**line, **fields}


def jsonl(*items: dict[str, Any]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def client_for(emulator: RunningEmulator, key: str | None = "test-key") -> httpx.Client:
    headers = {"x-api-key": key} if key is not None else {}
    return httpx.Client(base_url=emulator.base_url, headers=headers, timeout=10)


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with client_for(emulator) as http:
        yield http


def output_of(client: httpx.Client, batch_id: str) -> list[OutputLine]:
    response = client.get(f"/v1/batches/{batch_id}/output")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return [OutputLine.model_validate_json(line) for line in response.text.splitlines()]


def submit(client: httpx.Client, payload: bytes | str) -> Batch:
    response = client.post("/v1/batches", content=payload)
    assert response.status_code == 200, response.text
    return Batch.model_validate(response.json())


# --------------------------------------------------------------------------- happy path


def test_mixed_batch_completes_with_decodable_output_in_input_order(
    client: httpx.Client, wait_terminal: Waiter
) -> None:
    lines = [extract_line("e1"), summarize_line("s1"), classify_line("c1"), summarize_line("s2")]
    response = client.post(
        "/v1/batches",
        content=encode_jsonl(lines),
        headers={"content-type": "application/jsonl"},
    )
    assert response.status_code == 200
    created = response.json()
    assert created["object"] == "batch"
    assert created["id"].startswith("batch_")
    assert created["status"] == "validating"
    assert created["request_counts"] == {"total": 4, "completed": 0, "failed": 0}
    assert created["output_file_id"] is None

    batch = wait_terminal(client, created["id"])
    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 4, "failed": 0}
    assert batch.output_file_id == f"{batch.id}_output"

    output = output_of(client, batch.id)
    assert [line.custom_id for line in output] == ["e1", "s1", "c1", "s2"]
    assert all(line.ok for line in output)
    assert isinstance(output[0].decode(), ExtractResult)
    assert isinstance(output[1].decode(), SummarizeResult)
    classified = output[2].decode()
    assert isinstance(classified, ClassifyResult)
    assert classified.top_label in {"billing", "other"}
    body = output[1].response.body  # type: ignore[union-attr]
    assert body.id is not None and body.id.startswith("chatcmpl-")
    assert body.object == "chat.completion"
    assert body.model == "summarize"
    assert body.created is not None and body.created > 0
    assert body.choices[0].message.role == "assistant"
    assert body.choices[0].finish_reason == "stop"
    assert body.usage is not None
    assert body.usage.prompt_tokens == approx_tokens(TEXT) == body.usage.total_tokens
    assert body.usage.completion_tokens == 0


@pytest.mark.parametrize(
    "payload",
    [
        summarize_line("one").to_json(),
        json.dumps(summarize_line("one").model_dump(exclude_none=True), indent=2),
        "\r\n\n" + summarize_line("one").to_json() + "\r\n\r\n",
    ],
    ids=["one-line", "pretty-printed", "blank-lines-and-crlf"],
)
def test_a_single_object_is_a_one_item_batch(
    client: httpx.Client, wait_terminal: Waiter, payload: str
) -> None:
    batch = submit(client, payload)
    assert batch.request_counts.total == 1
    assert wait_terminal(client, batch.id).request_counts.completed == 1
    assert [line.custom_id for line in output_of(client, batch.id)] == ["one"]


def test_json_content_type_and_blank_lines_are_accepted(
    client: httpx.Client, wait_terminal: Waiter
) -> None:
    payload = "\n\n".join(line.to_json() for line in [summarize_line("a"), classify_line("b")])
    response = client.post(
        "/v1/batches", content=payload + "\n\n", headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    batch = wait_terminal(client, response.json()["id"])
    assert batch.request_counts.completed == 2


# --------------------------------------------------------------------------- whole-request 400


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (jsonl(raw_line("a", {"model": "translate", "text": "x"})), "line 1"),
        (jsonl(raw_line("a", {"model": "summarize", "text": "x"}), raw_line("b", {"text": "x"})),
         "line 2"),
        (jsonl(raw_line("a", {"model": "summarize", "text": "x"}), {"custom_id": "b"}), "line 2"),
        (b'{"custom_id": "a", "body": {"model": "summarize", "text": "x"}}\n{not json}\n',
         "line 2 is not valid JSON"),
        (b"[1, 2, 3]\n", "not a JSON object"),
        (jsonl(raw_line("a", {"model": "summarize", "text": "x"})).replace(b'"a"', b"7"),
         "custom_id"),
        (b"", "no lines"),
        (b"\n  \r\n", "no lines"),
    ],
    ids=["unknown-model", "missing-model", "missing-body", "bad-json", "not-object",
         "custom-id-not-string", "empty", "blank"],
)  # fmt: skip
def test_whole_request_errors_are_400_and_queue_nothing(
    emulator: RunningEmulator, client: httpx.Client, payload: bytes, expected: str
) -> None:
    response = client.post("/v1/batches", content=payload)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert expected in detail
    assert emulator.stats()["batches_created"] == 0
    assert emulator.stats()["lines_received"] == 0


def test_unknown_model_names_the_allowed_models(client: httpx.Client) -> None:
    payload = jsonl(raw_line("a", {"model": "summarize", "text": "x"}),
                    raw_line("b", {"model": "chat", "text": "x"}))  # fmt: skip
    detail = client.post("/v1/batches", content=payload).json()["detail"]
    assert "line 2" in detail and "'chat'" in detail and "'classify'" in detail
    assert "Nothing in this request was queued" in detail


def test_line_and_byte_limits(emulator_factory: Callable[..., RunningEmulator]) -> None:
    emulator = emulator_factory(max_lines=3, max_bytes=2_000)
    with client_for(emulator) as client:
        four = encode_jsonl([summarize_line(f"s{i}", "short text.") for i in range(4)])
        response = client.post("/v1/batches", content=four)
        assert response.status_code == 400
        assert "4 lines" in response.json()["detail"] and "3" in response.json()["detail"]

        big = encode_jsonl([summarize_line("big", "word " * 500)])
        response = client.post("/v1/batches", content=big)
        assert response.status_code == 400
        assert "2000 bytes" in response.json()["detail"]

        three = encode_jsonl([summarize_line(f"s{i}", "short text.") for i in range(3)])
        assert client.post("/v1/batches", content=three).status_code == 200
    assert emulator.stats()["batches_created"] == 1


def test_default_limit_is_fifty_lines(client: httpx.Client) -> None:
    fifty_one = encode_jsonl([summarize_line(f"s{i}", "short text.") for i in range(51)])
    assert client.post("/v1/batches", content=fifty_one).status_code == 400
    fifty = encode_jsonl([summarize_line(f"s{i}", "short text.") for i in range(50)])
    assert client.post("/v1/batches", content=fifty).status_code == 200


# --------------------------------------------------------------------------- 401, 404, 405


@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["missing", "wrong"])
def test_every_api_endpoint_requires_the_key(emulator: RunningEmulator, key: str | None) -> None:
    payload = encode_jsonl([summarize_line("a")])
    with client_for(emulator, key) as client:
        responses = [
            client.post("/v1/batches", content=payload),
            client.get("/v1/batches/batch_123"),
            client.get("/v1/batches/batch_123/output"),
            client.post("/extract", json={"text": TEXT, "entities": {"person": "a name"}}),
            client.post("/summarization/abstractive", json={"text": TEXT}),
            client.post("/classify", json={"text": TEXT, "labels": [{"name": "a"}]}),
        ]
    for response in responses:
        assert response.status_code == 401, response.request.url
        assert "x-api-key" in response.json()["detail"]
        assert "test-key" not in response.text
    assert emulator.stats()["batches_created"] == 0
    assert httpx.get(f"{emulator.base_url}/_emulator/stats").status_code == 200


def test_no_key_configured_means_no_auth(
    emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    emulator = emulator_factory(api_key=None)
    assert emulator.api_key is None
    with client_for(emulator, None) as client:
        batch = submit(client, summarize_line("a").to_json())
        assert wait_terminal(client, batch.id).status is BatchStatus.COMPLETED


def test_unknown_batch_and_undocumented_routes(client: httpx.Client) -> None:
    for path in ("/v1/batches/batch_nope", "/v1/batches/batch_nope/output"):
        response = client.get(path)
        assert response.status_code == 404
        assert "batch_nope" in response.json()["detail"]
    assert client.get("/v1/batches").status_code == 405  # no list endpoint (spec §3.5)
    assert client.post("/v1/batches/batch_nope/cancel").status_code == 404
    assert client.delete("/v1/batches/batch_nope").status_code == 405
    assert client.get("/_emulator/custom_ids", params={"batch_id": "nope"}).status_code == 404


def test_output_is_404_until_terminal_and_latency_is_honoured(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    emulator = emulator_factory(latency=0.6)
    with client_for(emulator) as client:
        started = time.monotonic()
        batch = submit(client, encode_jsonl([summarize_line("a"), classify_line("b")]))
        assert batch.status is BatchStatus.VALIDATING
        seen = {batch.status}
        while True:
            current = Batch.model_validate(client.get(f"/v1/batches/{batch.id}").json())
            seen.add(current.status)
            if current.is_terminal:
                break
            output = client.get(f"/v1/batches/{batch.id}/output")
            if output.status_code == 200:
                # It finished between the two requests: only a terminal batch has output.
                after = Batch.model_validate(client.get(f"/v1/batches/{batch.id}").json())
                assert after.is_terminal
                continue
            assert output.status_code == 404
            # The 404 names the status at the time of the output request, which may have
            # moved on from validating to in_progress since the GET above; never a terminal one.
            detail = output.json()["detail"]
            named = {s for s in BatchStatus if f"is {s.value};" in detail}
            assert len(named) == 1 and not named.pop().is_terminal, detail
            assert current.request_counts.completed == 0
            time.sleep(0.05)
        assert time.monotonic() - started >= 0.6
        assert seen == {BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.COMPLETED}
        assert current.request_counts.completed == 2
        assert len(output_of(client, batch.id)) == 2


# --------------------------------------------------------------------------- per-line errors


def test_invalid_lines_fail_alone_with_invalid_request(
    client: httpx.Client, wait_terminal: Waiter
) -> None:
    good = {"model": "summarize", "text": TEXT}
    payload = jsonl(
        raw_line("ok", good),
        raw_line("no-text", {"model": "summarize"}),
        raw_line("blank-text", {"model": "summarize", "text": "   "}),
        raw_line("no-labels", {"model": "classify", "text": TEXT, "labels": []}),
        raw_line("no-entities", {"model": "extract", "text": TEXT, "entities": {}}),
        raw_line("document", {"model": "extract", "text": TEXT, "entities": {"p": "person"},
                              "document": "aGVsbG8=", "document_mime_type": "image/png"}),
        raw_line("bad-method", good, method="GET"),
        raw_line("bad-url", good, url="/v1/completions"),
        raw_line("dup", good),
        raw_line("dup", good),
        raw_line("x" * 65, good),
    )  # fmt: skip
    batch = wait_terminal(client, submit(client, payload).id)
    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.model_dump() == {"total": 11, "completed": 1, "failed": 10}

    output = output_of(client, batch.id)
    assert [line.custom_id for line in output][:3] == ["ok", "no-text", "blank-text"]
    assert output[0].ok
    errors = {line.custom_id: line.error for line in output[1:]}
    assert all(e is not None and e.code == "invalid_request" for e in errors.values())
    assert all(line.response is None for line in output[1:])
    messages = {key: error.message for key, error in errors.items() if error is not None}
    assert "body.text" in messages["no-text"]
    assert "blank" in messages["blank-text"]
    assert "body.labels" in messages["no-labels"]
    assert "body.entities" in messages["no-entities"]
    assert "document" in messages["document"] and "text" in messages["document"]
    assert "method" in messages["bad-method"]
    assert "url" in messages["bad-url"]
    assert "more than once" in messages["dup"]
    assert "custom_id" in messages["x" * 65]
    assert [line.custom_id for line in output].count("dup") == 2
    assert all(not line.ok for line in output if line.custom_id == "dup")


def test_fail_rate_injects_retryable_per_line_errors(
    emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    emulator = emulator_factory(fail_rate=0.5, seed=7)
    with client_for(emulator) as client:
        batch = submit(client, encode_jsonl([summarize_line(f"s{i}") for i in range(30)]))
        batch = wait_terminal(client, batch.id)
        output = output_of(client, batch.id)
    failed = [line for line in output if not line.ok]
    assert 0 < len(failed) < 30
    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.failed == len(failed)
    assert batch.request_counts.completed == 30 - len(failed)
    for line in failed:
        assert line.response is None
        assert line.error is not None and line.error.code == "server_error"
        assert line.error.retryable
    assert all(isinstance(line.decode(), SummarizeResult) for line in output if line.ok)
    stats = emulator.stats()
    assert stats["lines_processed"] == 30
    assert stats["lines_failed"] == len(failed)


def test_fail_rate_decisions_are_seeded(
    emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    outcomes = []
    for _ in range(2):
        emulator = emulator_factory(fail_rate=0.3, seed=42)
        with client_for(emulator) as client:
            batch = submit(client, encode_jsonl([summarize_line(f"s{i}") for i in range(20)]))
            wait_terminal(client, batch.id)
            outcomes.append([line.ok for line in output_of(client, batch.id)])
        emulator.stop()
    assert outcomes[0] == outcomes[1]


def test_batch_fail_rate_fails_the_batch_with_an_error_line_per_input(
    emulator_factory: Callable[..., RunningEmulator], wait_terminal: Waiter
) -> None:
    emulator = emulator_factory(batch_fail_rate=1.0)
    with client_for(emulator) as client:
        batch = wait_terminal(client, submit(client, encode_jsonl(
            [summarize_line("a"), classify_line("b"), extract_line("c")])).id)  # fmt: skip
        assert batch.status is BatchStatus.FAILED
        assert batch.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
        output = output_of(client, batch.id)
    assert [line.custom_id for line in output] == ["a", "b", "c"]
    assert all(line.error is not None and line.error.code == "server_error" for line in output)
    stats = emulator.stats()
    assert stats["batches_failed"] == 1
    assert stats["lines_failed"] == 3


# --------------------------------------------------------------------------- HTTP faults


def test_http_faults_answer_before_anything_is_queued(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    emulator = emulator_factory(http_fault_rate=1.0, seed=3)
    payload = encode_jsonl([summarize_line("a")])
    with client_for(emulator) as client:
        responses = [client.post("/v1/batches", content=payload) for _ in range(30)]
        responses.append(client.post("/summarization/abstractive", json={"text": TEXT}))
        responses.append(client.get("/v1/batches/batch_x"))
        stats = client.get("/_emulator/stats")
    assert {response.status_code for response in responses} == {429, 500, 503}
    for response in responses:
        assert response.json() == {"detail": "injected fault"}
        if response.status_code == 429:
            assert response.headers["retry-after"] in {"0", "1"}
    assert stats.status_code == 200
    assert stats.json()["http_faults_injected"] == 32
    assert stats.json()["batches_created"] == 0


def test_partial_http_fault_rate_lets_some_requests_through(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    emulator = emulator_factory(http_fault_rate=0.5, seed=11)
    with client_for(emulator) as client:
        codes = [client.get("/v1/batches/batch_x").status_code for _ in range(40)]
    assert 404 in codes and set(codes) - {404} <= {429, 500, 503} and len(set(codes)) > 1
    assert emulator.stats()["http_faults_injected"] == sum(code != 404 for code in codes)


# --------------------------------------------------------------------------- realtime


def test_realtime_endpoints_share_the_engine(client: httpx.Client) -> None:
    extracted = client.post("/extract", json={"text": TEXT, "entities": {"person": "a name"}})
    assert extracted.status_code == 200
    ExtractResult.model_validate(extracted.json())

    summary = client.post("/summarization/abstractive", json={"text": TEXT, "max_tokens": 40})
    assert summary.status_code == 200
    SummarizeResult.model_validate(summary.json())
    assert summary.json()["latency_ms"] >= 0

    body = {"text": TEXT, "labels": [label.model_dump() for label in LABELS]}
    classified = client.post("/classify", json=body)
    assert classified.status_code == 200
    assert ClassifyResult.model_validate(classified.json()).top_label in {"billing", "other"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/extract", {"text": TEXT}),
        ("/extract", {"text": TEXT, "entities": {}}),
        ("/summarization/abstractive", {"instructions": "short"}),
        ("/summarization/abstractive", {"text": ""}),
        ("/classify", {"text": TEXT, "labels": []}),
    ],
)
def test_realtime_schema_errors_are_fastapi_422(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body"


# --------------------------------------------------------------------------- stats


def test_stats_count_batches_lines_and_resubmitted_custom_ids(
    emulator: RunningEmulator, client: httpx.Client, wait_terminal: Waiter
) -> None:
    first = submit(client, encode_jsonl([summarize_line("a"), summarize_line("b")]))
    second = submit(client, encode_jsonl([summarize_line("b"), classify_line("c")]))
    for batch in (first, second):
        wait_terminal(client, batch.id)
    stats = client.get("/_emulator/stats").json()
    assert stats == emulator.stats()
    assert stats == {
        "batches_created": 2,
        "lines_received": 4,
        "lines_processed": 4,
        "lines_failed": 0,
        "http_faults_injected": 0,
        "batches_failed": 0,
        "custom_ids_submitted_twice": 1,
        "custom_ids_succeeded_twice": 1,
        "batches_open": 0,
        "rejected_open_cap": 0,
        "chat_completions": 0,
    }
    listed = client.get("/_emulator/custom_ids", params={"batch_id": second.id}).json()
    assert listed == {"batch_id": second.id, "custom_ids": ["b", "c"]}
    assert client.get("/_emulator/custom_ids").json()["custom_ids"] == {"a": 1, "b": 2, "c": 1}


def test_duplicates_within_one_batch_are_not_submitted_twice(
    emulator: RunningEmulator, client: httpx.Client
) -> None:
    submit(client, encode_jsonl([summarize_line("a"), summarize_line("a")]))
    assert emulator.stats()["custom_ids_submitted_twice"] == 0


def test_config_repr_hides_the_api_key() -> None:
    config = EmulatorConfig(api_key="super-secret-value")
    assert "super-secret-value" not in repr(config)
    assert "super-secret-value" not in str(config)
    assert config.key == "super-secret-value"
