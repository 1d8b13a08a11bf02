"""Never pay twice, never lose a row: crashes, reruns, incremental nights, faults, timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchapi.emulator.runner import RunningEmulator
from tasks.batch import BatchWaitTimeout
from tasks.state import state_folder
from tests.conftest import free_port, prefect_home
from tests.flows.conftest import ENRICHMENTS, FLOW_TEST_KEY, make_documents
from tests.flows.fault_proxy import LoopbackProxy

ROOT = Path(__file__).resolve().parents[2]


def output_ids(destination: str) -> Counter[str]:
    return Counter(ds.dataset(destination, format="parquet").to_table().column("id").to_pylist())


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def submitted_batches(destination: str) -> int:
    """Batch ids in the run's ledger now, or -1 while a submission is on the wire.

    The ledger keeps the batches of groups not yet recorded. The API has no idempotency key
    and no batch listing, so a crash while a POST is on the wire cannot be told apart from one
    just before it (see README, "Resume"); the kill points below are taken while the flow is
    polling, which is where a night spends its time.
    """
    ledger = Path(state_folder(destination)) / "gen-000001" / "ledger.json"
    try:
        shards = json.loads(ledger.read_text())["shards"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    if any(entry["batch_id"] is None for entry in shards.values()):
        return -1
    return len(shards)


def kill_mid_run_then_rerun(
    params: dict,
    env: dict[str, str],
    tmp_path: Path,
    kill_after_batches: int,
    emulator: RunningEmulator | None = None,
) -> dict:
    """Run the flow's command line, SIGKILL it once `kill_after_batches` batches were created
    (counted by `emulator` if given, else in the ledger) with none on the wire, rerun it to
    the end, and return the rerun's report."""
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"enrichments": ENRICHMENTS, "poll_interval_seconds": 0.05, **params})
    )
    destination = params["destination"]

    def ready() -> bool:
        in_ledger = submitted_batches(destination)
        if emulator is None:
            return in_ledger >= kill_after_batches
        return in_ledger >= 1 and emulator.stats()["batches_created"] >= kill_after_batches

    command = [sys.executable, "-m", "flows.enrich", "--params", str(job)]
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(ready, timeout=90, interval=0.01)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert not (Path(destination) / "enriched.parquet").exists()

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    return json.loads(second.stdout[second.stdout.index("{") :])


def kill_a_small_job_and_rerun(
    prefect_api: str,
    emulator: RunningEmulator,
    corpus,
    tmp_path: Path,
    kill_after_batches: int = 2,
    **params: object,
) -> tuple[dict, str, str]:
    """60 documents in groups of 20 (60 lines a group, so 2 shards a group: 6 batches), at most
    2 batches open: killed mid-run, rerun to the end. Checks what every such run must show (it
    resumed, reattached, and no line was sent twice) and returns the rerun's report, the
    source and the destination."""
    source = corpus(60)
    destination = str(tmp_path / "out")
    job = {
        "source": source,
        "destination": destination,
        "batch_api": emulator.base_url,
        "group_size": 20,
        "max_in_flight": 2,
        **params,
    }
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "BATCH_API_KEY": FLOW_TEST_KEY}
    report = kill_mid_run_then_rerun(job, env, tmp_path, kill_after_batches, emulator)
    assert report["resumed"] is True
    assert report["batches_reattached"] >= 1
    stats = emulator.stats()
    assert stats["batches_created"] == 6
    assert stats["lines_received"] == 60 * 3
    assert stats["custom_ids_submitted_twice"] == 0
    return report, source, destination


@pytest.mark.parametrize("kill_after_batches", [2, 4])
def test_sigkill_mid_run_then_rerun_pays_once(
    prefect_api: str, corpus, api, tmp_path: Path, kill_after_batches: int
) -> None:
    emulator = api(latency=0.6)
    _, source, destination = kill_a_small_job_and_rerun(
        prefect_api, emulator, corpus, tmp_path, kill_after_batches
    )
    assert output_ids(destination) == Counter(pq.read_table(source).column("id").to_pylist())


def test_incremental_night_resends_only_changed_documents(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api()
    destination = str(tmp_path / "out")
    table = make_documents(20)
    source = corpus(table=table)
    run_flow(source=source, destination=destination, batch_api=emulator.base_url)
    first = ds.dataset(destination).to_table()
    lines_after_first = emulator.stats()["lines_received"]
    assert lines_after_first == 20 * 3

    quiet = run_flow(
        source=source, destination=destination, batch_api=emulator.base_url, mode="incremental"
    )
    assert emulator.stats()["lines_received"] == lines_after_first
    assert quiet.batches_submitted == 0
    assert quiet.enrichments["summary"].carried_over == 20
    second = ds.dataset(destination).to_table()
    assert (
        second.sort_by("id")
        .select(["id", "summary", "topic"])
        .equals(first.sort_by("id").select(["id", "summary", "topic"]))
    )

    texts = table.column("text").to_pylist()
    texts[3] = "Mr Paul Newman wants a refund for a charge of $5 made twice."
    changed = table.set_column(1, "text", pa.array(texts))
    changed = pa.concat_tables([changed, make_documents(1, start=500)])
    source = corpus(table=changed)
    night = run_flow(
        source=source, destination=destination, batch_api=emulator.base_url, mode="incremental"
    )
    assert emulator.stats()["lines_received"] == lines_after_first + 2 * 3
    assert night.enrichments["topic"].carried_over == 19
    out = {r["id"]: r for r in ds.dataset(destination).to_table().to_pylist()}
    assert len(out) == 21
    assert "Paul Newman" in {e["text"] for e in out["doc-00003"]["people"]}

    full = run_flow(source=source, destination=destination, batch_api=emulator.base_url)
    assert full.batches_submitted > 0
    assert emulator.stats()["lines_received"] == lines_after_first + 6 + 21 * 3


def test_retryable_line_failures_are_resent(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api(fail_rate=0.3, seed=5)
    destination = str(tmp_path / "out")
    report = run_flow(
        source=corpus(40), destination=destination, batch_api=emulator.base_url, max_line_attempts=6
    )
    stats = emulator.stats()
    table = ds.dataset(destination).to_table()
    errors = sum(table.column(f"{n}_error").null_count for n in ("people", "summary", "topic"))
    # Failed lines were resent: more lines than documents x enrichments reached the API, and
    # with six attempts at a 30% failure rate (almost) every line ends with a result.
    assert stats["lines_received"] > 40 * 3
    assert stats["lines_failed"] > 0
    assert errors >= 40 * 3 - 2
    assert report.lines_sent == stats["lines_received"]
    assert stats.get("custom_ids_succeeded_twice", 0) == 0


def test_faults_campaign_finishes_correctly(run_flow, corpus, api, tmp_path: Path) -> None:
    emulator = api(http_fault_rate=0.2, fail_rate=0.1, batch_fail_rate=0.25, seed=3)
    destination = str(tmp_path / "out")
    source = corpus(50)
    run_flow(
        source=source, destination=destination, batch_api=emulator.base_url, max_line_attempts=8
    )
    stats = emulator.stats()
    assert stats["http_faults_injected"] > 0
    assert stats["batches_failed"] > 0
    assert output_ids(destination) == Counter(pq.read_table(source).column("id").to_pylist())
    table = ds.dataset(destination).to_table()
    for name in ("people", "summary", "topic"):
        assert table.column(f"{name}_error").null_count == 50
    assert stats.get("custom_ids_succeeded_twice", 0) == 0


def test_emulator_restart_mid_run(
    prefect_api, run_flow, corpus, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("BATCH_API_KEY", FLOW_TEST_KEY)
    port = free_port()
    db = tmp_path / "emulator.sqlite"
    command = [
        sys.executable, "-m", "batchapi.emulator", "--host", "127.0.0.1", "--port", str(port),
        "--api-key", FLOW_TEST_KEY, "--db", str(db), "--latency", "1.0",
    ]  # fmt: skip

    def start() -> subprocess.Popen:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        return process

    emulator = start()
    destination = str(tmp_path / "out")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = run_flow(
                source=corpus(40),
                destination=destination,
                batch_api=f"http://127.0.0.1:{port}",
                group_size=20,
                max_in_flight=2,
            )
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: submitted_batches(destination) >= 1, timeout=60)
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=15)
        time.sleep(1.0)
        emulator = start()
        thread.join(timeout=180)
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=15)
    assert "error" not in outcome, outcome.get("error")
    assert sum(output_ids(destination).values()) == 40
    table = ds.dataset(destination).to_table()
    assert table.column("summary_error").null_count == 40
    import httpx

    restarted = start()
    try:
        stats = httpx.get(f"http://127.0.0.1:{port}/_emulator/stats").json()
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=15)
    assert stats["custom_ids_submitted_twice"] == 0
    assert stats["batches_created"] == outcome["report"].batches_submitted


def test_timeout_names_open_batches_and_next_run_picks_them_up(
    run_flow, corpus, api, tmp_path: Path
) -> None:
    emulator = api(latency=4.0)
    destination = str(tmp_path / "out")
    source = corpus(10)
    with pytest.raises(BatchWaitTimeout) as caught:
        run_flow(
            source=source, destination=destination, batch_api=emulator.base_url, timeout_seconds=1.0
        )
    created = emulator.stats()["batches_created"]
    assert created >= 1
    assert "batch_" in str(caught.value) and "Rerun the same job" in str(caught.value)
    generation = json.loads((Path(state_folder(destination)) / "generation.json").read_text())
    assert generation["status"] == "failed"

    report = run_flow(source=source, destination=destination, batch_api=emulator.base_url)
    assert report.resumed and report.batches_reattached == created
    assert report.batches_submitted == 0
    assert emulator.stats()["batches_created"] == created
    assert sum(output_ids(destination).values()) == 10


def test_s3_write_error_keeps_the_previous_dataset(
    run_flow, corpus, api, s3_bucket: str, moto_server: str, monkeypatch
) -> None:
    import s3fs

    emulator = api()
    destination = f"s3://{s3_bucket}/enriched"
    run_flow(source=corpus(8), destination=destination, batch_api=emulator.base_url)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    before = fs.cat_file(f"{s3_bucket}/enriched/enriched.parquet")

    with LoopbackProxy(moto_server, fail_marker="/staging/") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        with pytest.raises(Exception) as caught:
            run_flow(source=corpus(12), destination=destination, batch_api=emulator.base_url)
        assert "staging" in str(caught.value) or "InternalError" in str(caught.value)
        assert proxy.failed_writes > 0

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.cat_file(f"{s3_bucket}/enriched/enriched.parquet") == before
    previous = ds.dataset(f"{s3_bucket}/enriched", format="parquet", filesystem=fs).to_table()
    assert previous.num_rows == 8


def test_batches_the_api_forgot_are_submitted_again(run_flow, corpus, api, tmp_path: Path) -> None:
    slow = api(latency=30.0)
    destination = str(tmp_path / "out")
    source = corpus(10)
    with pytest.raises(BatchWaitTimeout):
        run_flow(source=source, destination=destination, batch_api=slow.base_url, timeout_seconds=1)
    forgotten = slow.stats()["batches_created"]
    slow.stop()

    fresh = api()  # a new database: the batches of the first run are unknown here
    report = run_flow(source=source, destination=destination, batch_api=fresh.base_url)
    assert report.resumed
    assert fresh.stats()["batches_created"] == forgotten == report.batches_submitted
    assert sum(output_ids(destination).values()) == 10
    assert ds.dataset(destination).to_table().column("summary_error").null_count == 10


def test_embedded_backend_resumes_after_sigkill(prefect_api: str, corpus, tmp_path: Path) -> None:
    """The embedded emulator keeps its batches beside the state, so a rerun reattaches."""
    source = corpus(300)
    destination = str(tmp_path / "out")
    params = {
        "source": source,
        "destination": destination,
        "group_size": 100,
        "max_in_flight": 2,
        "parallel_groups": 1,
    }
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    report = kill_mid_run_then_rerun(params, env, tmp_path, kill_after_batches=3)
    assert report["resumed"] is True and report["batches_reattached"] >= 1
    assert report["backend"] == "embedded-emulator (heuristic engine)"
    assert output_ids(destination) == Counter(pq.read_table(source).column("id").to_pylist())
    # Once the run succeeded, its emulator database is gone.
    assert not (Path(state_folder(destination)) / "embedded-emulator.sqlite").exists()


def test_sigterm_stops_the_run_cleanly_with_nothing_left_running(
    corpus, tmp_path: Path, migrated_prefect_db: Path
) -> None:
    """SIGTERM (a supervisor stopping a cron job) ends the command line run as Crashed, marks
    the generation failed, frees the destination, and leaves no process behind: neither the
    embedded emulator nor the temporary Prefect server the run started for itself."""
    import psutil

    destination = tmp_path / "out"
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "source": corpus(300),
                "destination": str(destination),
                "enrichments": ENRICHMENTS,
                "group_size": 100,
                "max_in_flight": 2,
                "parallel_groups": 1,
            }
        )
    )
    # No PREFECT_API_URL: the run starts its own temporary Prefect server.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = prefect_home(tmp_path / "prefect-home", migrated_prefect_db)
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.enrich", "--params", str(job)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: submitted_batches(str(destination)) >= 2, timeout=150, interval=0.05)
        children = psutil.Process(run.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("prefect.server.api.server" in c for c in commands), commands
        assert any("batchapi.emulator" in c for c in commands), commands
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "aborted by a termination signal" in stderr
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    state = Path(state_folder(str(destination)))
    assert json.loads((state / "generation.json").read_text())["status"] == "failed"
    assert not (state / "lock.json").exists()
