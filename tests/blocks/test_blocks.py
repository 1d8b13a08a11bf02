"""Blocks against a real Prefect server: registration, a BatchApi document saved and loaded in
flow runs, and an API key that never shows up in logs, artifacts, parameters, states or errors."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from prefect import flow, task
from prefect.client.schemas.objects import State
from pydantic import SecretStr

from batchapi.emulator.runner import RunningEmulator, running_emulator
from blocks import BatchApi, S3Storage
from blocks.register import main as register_main
from flows.enrich import enrich_documents
from flows.sample_corpus import write_corpus

ENRICHMENTS = [
    {"name": "people", "model": "extract", "entities": {"person": "a person's full name"}},
    {"name": "summary", "model": "summarize", "instructions": "One sentence."},
    {
        "name": "topic",
        "model": "classify",
        "labels": [{"name": "billing", "rubric": "Is it about a payment?"}],
    },
]


@pytest.fixture
def marker() -> str:
    """An API key that is easy to find anywhere it leaks."""
    return f"sk-leak-marker-{secrets.token_hex(8)}"


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    return write_corpus(str(tmp_path / "docs.parquet"), 12)


@pytest.fixture
def api_logs_at_debug() -> Iterator[None]:
    """Send every run log line to the API, not just the suite's WARNING and above."""
    prefect_logger = logging.getLogger("prefect")
    previous = prefect_logger.level
    prefect_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        prefect_logger.setLevel(previous)


def test_batch_api_block_repr_and_defaults_hide_the_key(marker: str) -> None:
    block = BatchApi(base_url="https://api.scaledown.xyz/v1/", api_key=SecretStr(marker))
    assert block.base_url == "https://api.scaledown.xyz"
    assert block.limits().max_lines == 50
    for shown in (repr(block), str(block), block.model_dump_json()):
        assert marker not in shown
    with pytest.raises(ValueError, match="http"):
        BatchApi(base_url="api.scaledown.xyz")


def test_register_cli_registers_types_and_saves_a_document(
    prefect_api: str, marker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from prefect import get_client

    monkeypatch.setenv("TEST_BATCH_KEY", marker)
    argv = ["--save-emulator", "cli-saved", "--base-url", "http://127.0.0.1:9/v1"]
    assert register_main([*argv, "--api-key-env", "TEST_BATCH_KEY", "--poll-interval", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch-api" in out and "s3-storage" in out and "'cli-saved'" in out
    assert marker not in out

    with get_client(sync_client=True) as client:
        slugs = {t.slug for t in client.read_block_types()}
    assert {"batch-api", "s3-storage"} <= slugs
    loaded = BatchApi.load("cli-saved")
    assert loaded.base_url == "http://127.0.0.1:9"
    assert loaded.api_key is not None and loaded.api_key.get_secret_value() == marker
    assert loaded.poll_interval_seconds == 2


@task
def _read_block(name: str) -> dict[str, Any]:
    block = BatchApi.load(name)
    return {"base_url": block.base_url, "has_key": block.api_key is not None}


@flow
def _load_in_a_run(batch_api: str, storage: str) -> dict[str, Any]:
    settings = S3Storage.load(storage).settings()
    return {**_read_block(batch_api), "region": settings.region}


def test_blocks_saved_then_loaded_inside_a_flow_run(prefect_api: str, marker: str) -> None:
    BatchApi(base_url="http://127.0.0.1:9", api_key=SecretStr(marker)).save(
        "in-run", overwrite=True
    )
    S3Storage(region="eu-central-1", aws_secret_access_key=SecretStr(marker)).save(
        "in-run-s3", overwrite=True
    )
    result = _load_in_a_run("in-run", "in-run-s3")
    assert result == {"base_url": "http://127.0.0.1:9", "has_key": True, "region": "eu-central-1"}


def _everything_recorded(flow_run_id: Any) -> str:
    """Logs, artifacts, parameters and states of a flow run and its task runs, as one text."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        run = client.read_flow_run(flow_run_id)
        states = client.read_flow_run_states(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert logs, "the run sent no logs"
    parts = [log.model_dump_json() for log in logs]
    parts += [artifact.model_dump_json() for artifact in artifacts]
    parts += [run.model_dump_json()] + [state.model_dump_json() for state in states]
    parts += [task_run.model_dump_json() for task_run in task_runs]
    return "\n".join(parts)


def _run(**params: Any) -> State:
    return enrich_documents(enrichments=ENRICHMENTS, return_state=True, **params)  # type: ignore[call-overload]


@pytest.fixture
def emulator(marker: str) -> Iterator[RunningEmulator]:
    with running_emulator(api_key=marker) as running:
        yield running


def test_key_from_a_block_reaches_the_api_but_no_record_of_the_run(
    prefect_api: str,
    api_logs_at_debug: None,
    marker: str,
    emulator: RunningEmulator,
    corpus: str,
    tmp_path: Path,
) -> None:
    BatchApi(base_url=emulator.base_url, api_key=SecretStr(marker), poll_interval_seconds=0.2).save(
        "leak-check", overwrite=True
    )
    destination = tmp_path / "out"
    state = _run(source=corpus, destination=str(destination), batch_api="leak-check")
    assert state.is_completed(), state
    assert emulator.stats()["batches_created"] > 0
    assert ds.dataset(destination).to_table().num_rows == 12

    recorded = _everything_recorded(state.state_details.flow_run_id)
    assert "enrich-report" in recorded and "enrich-progress" in recorded
    assert "leak-check" in recorded  # the parameter names the block, never its key
    assert marker not in recorded


def test_a_rejected_key_fails_the_run_without_showing_it(
    prefect_api: str, api_logs_at_debug: None, marker: str, corpus: str, tmp_path: Path
) -> None:
    wrong = f"{marker}-wrong"
    with running_emulator(api_key=marker) as emulator:
        BatchApi(base_url=emulator.base_url, api_key=SecretStr(wrong)).save(
            "wrong-key", overwrite=True
        )
        state = _run(source=corpus, destination=str(tmp_path / "out"), batch_api="wrong-key")
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, Exception)
    assert "401" in str(error) or "key" in str(error).lower()
    for shown in (str(error), repr(error), str(state.message)):
        assert marker not in shown and wrong not in shown
    recorded = _everything_recorded(state.state_details.flow_run_id)
    assert marker not in recorded and wrong not in recorded


def test_blocks_are_settings_that_import_no_tasks_or_flows() -> None:
    """Data flows one way: tasks and flows use the blocks, never the other way round."""
    import subprocess
    import sys

    probe = (
        "import sys, blocks, blocks.register; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tasks', 'flows'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"
    block = BatchApi(base_url="http://127.0.0.1:1", max_lines_per_batch=20)
    assert block.limits().max_lines == 20
    assert block.limits(shard_size=5).max_lines == 5
    assert block.limits(shard_size=500).max_lines == 20
    assert block.client().limits == block.limits()
