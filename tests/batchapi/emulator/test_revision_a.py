"""The emulator speaking revision A of the batch docs, over real HTTP, and the client reading it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import ValidationError

from batchapi.client import BatchApiClient, SubmitOutcomeUnknownError, TransientApiError
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.faults import HttpFaults
from batchapi.emulator.runner import RunningEmulator
from batchapi.errors import BatchApiError
from batchapi.models import (
    BatchShapeError,
    BatchStatus,
    Revision,
    RevisionABatch,
    SummarizeResult,
    parse_batch_reply,
)
from tests.batchapi.emulator.test_app import (
    TEXT,
    classify_line,
    client_for,
    raw_line,
    summarize_line,
)
from tests.batchapi.helpers import wait_for
from tests.conftest import TEST_API_KEY

Factory = Callable[..., RunningEmulator]


def post_lines(client: httpx.Client, lines: list) -> httpx.Response:
    payload = "".join(line.to_json() + "\n" for line in lines)
    return client.post("/v1/batches", content=payload)


def wait_status(client: httpx.Client, batch_id: str, status: str) -> dict:
    seen: list[dict] = []

    def reached() -> bool:
        response = client.get(f"/v1/batches/{batch_id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())
        return seen[-1]["status"] == status

    wait_for(reached, timeout=20, interval=0.02)
    return seen[-1]


def test_create_and_status_replies_have_revision_a_shape(emulator_factory: Factory) -> None:
    emulator = emulator_factory(revision="A", latency=2.0)
    with client_for(emulator) as client:
        bad = raw_line("bad", {"model": "summarize", "text": ""})
        payload = "".join(
            [summarize_line("s1").to_json() + "\n", classify_line("c1").to_json() + "\n"]
        )
        created = client.post("/v1/batches", content=payload + json.dumps(bad) + "\n")
        assert created.status_code == 200, created.text
        reply = created.json()
        assert set(reply) == {"batch_id", "status", "total_count"}
        assert reply["batch_id"].startswith("batch-")
        assert reply["status"] == "queued"
        assert reply["total_count"] == 3

        processing = wait_status(client, reply["batch_id"], "processing")
        assert processing == {
            "batch_id": reply["batch_id"],
            "status": "processing",
            "total_count": 3,
            "completed_count": 0,
            "failed_count": 0,
        }
        early = client.get(f"/v1/batches/{reply['batch_id']}/output")
        assert early.status_code == 404
        assert "processing" in early.json()["detail"]

        done = wait_status(client, reply["batch_id"], "completed")
        assert done["completed_count"] == 2 and done["failed_count"] == 1
        output = client.get(f"/v1/batches/{reply['batch_id']}/output")
        assert output.status_code == 200
        assert [json.loads(line)["custom_id"] for line in output.text.splitlines()] == [
            "s1",
            "c1",
            "bad",
        ]
        assert client.get("/v1/batches/batch-unknown").status_code == 404


def test_revision_a_enforces_no_line_limit_but_the_byte_limit(emulator_factory: Factory) -> None:
    emulator = emulator_factory(revision="A", max_bytes=200_000)
    with client_for(emulator) as client:
        many = post_lines(client, [summarize_line(f"s{i}", "Short text.") for i in range(120)])
        assert many.status_code == 200, many.text
        assert many.json()["total_count"] == 120
        huge = post_lines(client, [summarize_line(f"h{i}") for i in range(1_000)])
        assert huge.status_code == 400
        assert "200000 bytes" in huge.json()["detail"]
    assert emulator.stats()["batches_created"] == 1


def test_an_explicit_line_limit_applies_to_revision_a(emulator_factory: Factory) -> None:
    emulator = emulator_factory(revision="A", max_lines=3)
    with client_for(emulator) as client:
        response = post_lines(client, [summarize_line(f"s{i}") for i in range(4)])
    assert response.status_code == 400
    assert "the limit is 3 lines" in response.json()["detail"]


def test_revision_b_keeps_its_fifty_lines() -> None:
    assert EmulatorConfig().line_limit == 50
    assert EmulatorConfig(revision="A").line_limit is None
    assert EmulatorConfig(revision="A", max_lines=70).line_limit == 70


def test_batch_router_not_configured_is_revision_a_503(emulator_factory: Factory) -> None:
    emulator = emulator_factory(revision="A", batch_router_configured=False)
    with client_for(emulator) as client:
        created = post_lines(client, [summarize_line("s1")])
        assert created.status_code == 503
        assert "batch router not configured" in created.json()["detail"]
        assert client.get("/v1/batches/batch-x").status_code == 503
        # Only the batch router is missing: the realtime endpoints still answer.
        assert client.post("/summarization/abstractive", json={"text": TEXT}).status_code == 200
    with (
        BatchApiClient(emulator.base_url, TEST_API_KEY, max_retries=0) as api,
        pytest.raises(TransientApiError) as caught,
    ):
        api.submit([summarize_line("s1")])
    assert caught.value.status_code == 503
    assert "batch router not configured" in str(caught.value)
    assert emulator.stats()["batches_created"] == 0
    with pytest.raises(ValidationError, match="revision B documents no 503"):
        EmulatorConfig(batch_router_configured=False)


def test_revision_a_injects_its_own_error_statuses() -> None:
    faults = HttpFaults(seed=1, rate=1.0, revision=Revision.A)
    assert {faults.pick() for _ in range(200)} == {429, 502, 503}


def test_client_round_trip_against_revision_a(emulator_factory: Factory) -> None:
    emulator = emulator_factory(revision="A")
    with BatchApiClient(emulator.base_url, TEST_API_KEY) as api:
        batch = api.submit([summarize_line("s1"), classify_line("c1")])
        assert batch.id.startswith("batch-")
        assert batch.status is BatchStatus.VALIDATING
        assert batch.request_counts.total == 2
        wait_for(lambda: api.get(batch.id).is_terminal, timeout=20, interval=0.02)
        done = api.get(batch.id)
        assert done.status is BatchStatus.COMPLETED
        assert done.request_counts.model_dump() == {"total": 2, "completed": 2, "failed": 0}
        lines = {line.custom_id: line for line in api.output(batch.id)}
    assert isinstance(lines["s1"].decode(), SummarizeResult)
    assert lines["c1"].ok


def test_revision_a_reply_round_trips_through_the_models() -> None:
    reply = {"batch_id": "batch-1", "status": "processing", "total_count": 4}
    batch = parse_batch_reply({**reply, "completed_count": 1, "failed_count": 2})
    assert batch.status is BatchStatus.IN_PROGRESS
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 1, "failed": 2}
    assert json.loads(RevisionABatch.of(batch, created=True).to_json()) == reply
    # A server between the revisions may use B's words in an A-shaped reply.
    mixed = parse_batch_reply({"batch_id": "b", "status": "in_progress", "total_count": 1})
    assert mixed.status is BatchStatus.IN_PROGRESS


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            {"job": "j1", "state": "done"},
            "matches neither documented revision of the Batch object",
        ),
        ({"batch_id": "b1", "status": "queued"}, "revision A's Batch object (it has `batch_id`)"),
        ({"id": "b1", "status": "running"}, "revision B's Batch object (it has `id`)"),
    ],
)
def test_unknown_reply_shapes_name_their_fields(reply: dict, expected: str) -> None:
    with pytest.raises(BatchShapeError) as caught:
        parse_batch_reply(reply)
    message = str(caught.value)
    assert expected in message
    assert "its fields are: " + ", ".join(f"`{name}`" for name in reply) in message


class ForeignServer:
    """A real HTTP server that answers every request with one fixed JSON object: a batch
    service that speaks neither revision."""

    def __init__(self, reply: dict) -> None:
        body = json.dumps(reply).encode()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def foreign_server() -> Iterator[ForeignServer]:
    server = ForeignServer({"job_id": "j-1", "state": "running", "items": 2})
    yield server
    server.close()


def test_client_names_the_fields_of_an_unknown_reply(foreign_server: ForeignServer) -> None:
    with BatchApiClient(foreign_server.base_url, "sk-secret-in-header") as api:
        with pytest.raises(BatchApiError) as got:
            api.get("j-1")
        with pytest.raises(SubmitOutcomeUnknownError) as submitted:
            api.submit([summarize_line("s1", TEXT)])
    for error in (got.value, submitted.value):
        message = str(error)
        assert "neither documented revision of the Batch object" in message
        assert "`job_id`, `state`, `items`" in message
        assert "sk-secret-in-header" not in message
    assert got.value.operation == "GET /v1/batches/j-1"
