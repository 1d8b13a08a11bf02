"""The deployments against a real Prefect server: `prefect deploy --all` accepts prefect.yaml,
and `python -m deployments.serve` serves them so a parameterised run completes."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.dataset as ds

from deployments.local import Child, spawn
from flows.sample_corpus import write_corpus
from tasks.spec import parse_enrichments

REPO = Path(__file__).resolve().parents[2]
POOL = "batch-enrich-pool"
ENRICHMENT_COLUMNS = ["people", "summary", "topic", "topic_scores"]


def _prefect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_prefect_yaml_deploys_nightly_on_demand_and_partitioned(prefect_api: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    result = _prefect(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"
    )
    assert result.returncode == 0, result.stdout + result.stderr

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("enrich-documents/nightly")
        on_demand = client.read_deployment_by_name("enrich-documents/on-demand")
        partitioned = client.read_deployment_by_name("enrich-partitioned/partitioned")
    assert [s.schedule.model_dump(include={"cron", "timezone"}) for s in nightly.schedules] == [
        {"cron": "0 2 * * *", "timezone": "Europe/Berlin"}
    ]
    # The UI shows a schedule by its slug, so the slug names the time zone.
    assert "Europe/Berlin" in (nightly.schedules[0].slug or "")
    assert on_demand.schedules == []
    assert nightly.parameters["mode"] == "incremental"
    # The parts run as on-demand runs of the same pool.
    assert partitioned.parameters["deployment"] == "enrich-documents/on-demand"
    assert partitioned.parameters["output_format"] == "delta"
    assert partitioned.entrypoint == "flows/partitioned.py:enrich_partitioned"
    for deployment in (nightly, on_demand):
        assert deployment.entrypoint == "flows/enrich.py:enrich_documents"
    for deployment in (nightly, on_demand, partitioned):
        assert deployment.work_pool_name == POOL
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        enrichments = parse_enrichments(deployment.parameters["enrichments"])
        assert [e.model for e in enrichments] == ["extract", "summarize", "classify"]
        # The UI builds its run form from this schema.
        properties = deployment.parameter_openapi_schema["properties"]
        assert {"source", "destination", "enrichments", "batch_api", "mode"} <= set(properties)
        assert all(p.get("description") for p in properties.values())
        jsonschema.validate(deployment.parameters, deployment.parameter_openapi_schema)


def _wait_for_line(child: Child, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, child.log_tail(400))
        if found:
            return found
        assert child.running(), child.log_tail()
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in time:\n{child.log_tail()}")


def _wait_for_final_state(flow_run_id: object, timeout: float) -> object:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout} s")


def test_served_on_demand_deployment_runs_with_parameters(prefect_api: str, tmp_path: Path) -> None:
    from prefect import get_client

    source = write_corpus(str(tmp_path / "corpus" / "docs.parquet"), 30)
    served_default = tmp_path / "served-default"
    destination = tmp_path / "enriched"
    serve = spawn(
        "serve",
        [
            sys.executable, "-m", "deployments.serve", "--api-url", prefect_api,
            "--latency", "0", "--replace", "--param", f"source={source}",
            "--param", f"destination={served_default}",
        ],
        dict(os.environ),
        tmp_path / "serve.log",
        cwd=REPO,
    )  # fmt: skip
    try:
        _wait_for_line(serve, r"deployments are being served", timeout=90)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("enrich-documents/on-demand")
            assert deployment.parameters["batch_api"] == "local-emulator"
            flow_run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"destination": str(destination), "max_in_flight": 2},
            )
        finished = _wait_for_final_state(flow_run.id, timeout=120)
        assert finished.state.is_completed(), (finished.state, serve.log_tail())  # type: ignore[attr-defined]
    finally:
        status = serve.stop(timeout=60)
    assert status == 0, serve.log_tail()
    stopped = re.findall(r"stopping the (.+?) \(pid (\d+)\)", serve.log_tail(400))
    assert [name for name, _ in stopped] == ["batch api emulator"]  # the server is the fixture's
    for _, pid in stopped:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(int(pid))

    table = ds.dataset(destination, format="parquet").to_table()
    assert table.num_rows == 30
    assert set(ENRICHMENT_COLUMNS) <= set(table.column_names)
    for name in ("people", "summary", "topic"):
        assert table.column(f"{name}_error").null_count == 30
    assert pa.types.is_string(table.schema.field("summary").type)
    assert sorted(table.column("id").to_pylist()) == sorted(
        ds.dataset(source).to_table().column("id").to_pylist()
    )
    assert not served_default.exists()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_serving_drops_a_schedule_whose_slug_prefect_yaml_renamed(prefect_api: str) -> None:
    """A renamed slug would otherwise leave the old schedule running beside the new one."""
    from dataclasses import replace

    from prefect import get_client

    from deployments.definitions import load_specs, runner_deployment
    from deployments.serve import drop_undeclared_schedules

    (nightly,) = [s for s in load_specs() if s.name == "nightly"]
    spec = replace(nightly, name="renamed-slug-check")
    before = replace(spec, schedules=[{**spec.schedules[0], "slug": "nightly-0200"}])
    runner_deployment(before, {}).apply()
    runner_deployment(spec, {}).apply()
    assert drop_undeclared_schedules([spec]) == [
        "enrich-documents/renamed-slug-check: nightly-0200"
    ]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("enrich-documents/renamed-slug-check")
    assert [s.slug for s in deployment.schedules] == [spec.schedules[0]["slug"]]
    assert deployment.schedules[0].schedule.timezone == "Europe/Berlin"
