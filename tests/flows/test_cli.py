"""The command line: help, overrides, one clear message for a user error, the demo's hints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchapi.emulator.runner import RunningEmulator
from tests.conftest import free_port, prefect_home
from tests.flows.conftest import ENRICHMENTS, FLOW_TEST_KEY

ROOT = Path(__file__).resolve().parents[2]


def command_line(
    args: list[str], env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.enrich", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def without_prefect_server(tmp_path: Path, database: Path | None = None) -> dict[str, str]:
    """An environment in which a run would start its own temporary Prefect server, with
    none of the settings the test session makes for Prefect; on a copy of `database` if
    given (see `migrated_prefect_db`)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")
        and not k.startswith("PREFECT_SERVER_EPHEMERAL")
    }
    home = tmp_path / "prefect-home"
    env["PREFECT_HOME"] = prefect_home(home, database) if database else str(home)
    return env


def write_job(tmp_path: Path, **params: Any) -> Path:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(params))
    return job


def test_help_explains_the_job_file_and_offers_every_flow_parameter(capsys) -> None:
    from flows.cli import flow_parameters, main
    from flows.enrich import enrich_documents

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--params JOB.json" in text and "The job file (--params) is a JSON object" in text
    assert "options given here override its values" in text
    for model in ("extract:", "summarize:", "classify:"):
        assert model in text
    parameters = flow_parameters(enrich_documents.fn)
    assert {p.name for p in parameters} >= {"source", "destination", "enrichments", "mode"}
    for parameter in parameters:
        assert parameter.option in text
        if parameter.description:
            assert " ".join(parameter.description.split()) in text
    assert "--mode {full,incremental}" in text


def test_a_mistake_in_the_job_is_one_message_before_prefect_starts(corpus, tmp_path) -> None:
    job = write_job(
        tmp_path,
        source=corpus(5),
        destination=str(tmp_path / "out"),
        enrichments=ENRICHMENTS,
        text_column="body",
    )
    result = command_line(["--params", str(job)], without_prefect_server(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    message = "has no column 'body'"
    assert result.stderr.count(message) == 1, result.stderr
    assert result.stderr.startswith("python -m flows.enrich: error: source ")
    assert "Traceback" not in result.stderr
    # Refused before Prefect was started, so nothing else was printed.
    assert "temporary server" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", "{missing}"], "cannot read the job file"),
        (["--params", "{not_json}"], "is not valid JSON"),
        (["--params", "{job}", "--max-in-flight", "0"], "--max-in-flight / 'max_in_flight'"),
        (["--params", "{job}", "--group-size", "many"], "valid integer"),
        (["--params", "{job}", "--enrichments", "[{"], "--enrichments is not valid JSON"),
        (
            ["--params", "{job}", "--enrichments", '[{"name": "x", "model": "translate"}]'],
            "unknown model 'translate'",
        ),
        (["--params", "{job}", "--source", "{tmp}/nowhere"], "does not exist"),
        (["--params", "{job}", "--task-runner", "dask"], "set PREFECT_API_URL"),
        (["--source", "{tmp}/docs.parquet"], "missing --destination"),
        (["--params", "{unknown_key}"], "unknown parameter(s) ['sorce']"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    args: list[str], message: str, corpus, tmp_path: Path, capsys, monkeypatch
) -> None:
    from flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    source = corpus(3)
    params = {"source": source, "destination": str(tmp_path / "out"), "enrichments": ENRICHMENTS}
    files = {
        "job": write_job(tmp_path, **params),
        "missing": tmp_path / "missing.json",
        "not_json": tmp_path / "not.json",
        "unknown_key": tmp_path / "unknown.json",
    }
    files["not_json"].write_text("{'source': 1}")
    files["unknown_key"].write_text(json.dumps({**params, "sorce": source}))
    names = {"tmp": Path(source).parent, **files}
    argv = []
    for arg in args:
        for key, value in names.items():
            arg = arg.replace("{" + key + "}", str(value))
        argv.append(arg)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count(message) == 1, captured.err
    assert captured.err.startswith("python -m flows.enrich: error: ")
    assert len(captured.err.splitlines()) == 1


def test_options_override_the_job_file_and_a_run_prints_no_traceback(
    corpus, tmp_path: Path, migrated_prefect_db: Path
) -> None:
    """A normal run, on the temporary Prefect server it starts for itself."""
    job = write_job(
        tmp_path,
        source=corpus(4),
        destination=str(tmp_path / "from-the-job-file"),
        enrichments=ENRICHMENTS[1:2],
    )
    destination = tmp_path / "from-the-option"
    result = command_line(
        ["--params", str(job), "--destination", str(destination), "--mode", "incremental"],
        without_prefect_server(tmp_path, migrated_prefect_db),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["destination"] == str(destination) and report["mode"] == "incremental"
    assert report["rows_in"] == 4
    assert (destination / "enriched.parquet").exists()
    assert not (tmp_path / "from-the-job-file").exists()
    assert "Traceback" not in result.stderr and "database is locked" not in result.stderr


def test_a_refused_key_during_the_run_is_one_message(
    prefect_api: str, api: Callable[..., RunningEmulator], corpus, tmp_path: Path
) -> None:
    emulator = api()
    job = write_job(
        tmp_path,
        source=corpus(4),
        destination=str(tmp_path / "out"),
        enrichments=ENRICHMENTS,
        batch_api=emulator.base_url,
        poll_interval_seconds=0.05,
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "BATCH_API_KEY": "not-" + FLOW_TEST_KEY}
    result = command_line(["--params", str(job)], env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "HTTP 401" in line]
    assert line.startswith("python -m flows.enrich: error: ")
    assert "Check the API key" in line and "not-" + FLOW_TEST_KEY not in result.stderr
    assert emulator.stats()["batches_created"] == 0


def test_an_unexpected_error_keeps_its_traceback(corpus, tmp_path: Path) -> None:
    job = write_job(
        tmp_path, source=corpus(3), destination=str(tmp_path / "out"), enrichments=ENRICHMENTS
    )
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    result = command_line(["--params", str(job)], env)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "Failed to reach API" in result.stderr


def test_the_demo_closing_hints_are_commands_that_work(tmp_path: Path, capsys) -> None:
    from flows.cli import build_parser, check_source, flow_parameters, resolve_job
    from flows.demo import build_parser as demo_parser
    from flows.demo import closing_hints, demo_job
    from flows.enrich import enrich_documents

    output = tmp_path / "demo-output"
    job = demo_job(output)
    Path(job["source"]).parent.mkdir(parents=True)

    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "kind": ["k"]}), job["source"])
    (output / "job.json").write_text(json.dumps(job))

    parameters = flow_parameters(enrich_documents.fn)
    hints = closing_hints(output, ".venv/bin/python")
    assert any("--mode" in command and "incremental" in command for _, command in hints)
    for _, command in hints:
        assert command[:2] == [".venv/bin/python", "-m"]
        module, args = command[2], command[3:]
        if module == "flows.demo":
            assert demo_parser().parse_args(args).mode == "incremental"
        elif args == ["--help"]:
            with pytest.raises(SystemExit) as exited:
                build_parser(parameters).parse_args(args)
            assert exited.value.code == 0
        else:
            assert module == "flows.enrich"
            resolved = resolve_job(build_parser(parameters).parse_args(args), parameters)
            assert resolved["mode"] == "incremental"
            check_source(resolved)
