"""Scenarios of `bench/pipeline.py` beyond the scale rows: latency and S3.

- latency: the flow against the emulator CLI in a subprocess whose batches take `--latency`
  seconds (optionally jittered, optionally with an open-batch cap). Little's law gives the
  bound: with W batches open at once and batches taking L seconds on average, N batches take
  at least N * L / W seconds. Efficiency = bound / flow seconds.
- s3: the same 4,000 documents written to a local destination, to `s3://` on a moto server on
  loopback, and to the same moto server through a loopback proxy that adds a delay to every
  request (and counts them).

Every flow runs in a fresh subprocess (`python bench/scenarios.py --child SPEC RESULT`) that
starts its own temporary Prefect server first (a warm-up flow), so "flow s" is the enrichment
alone. The child wraps the Batch API client's `submit_jsonl`, `get` and `output` to count
calls and time each batch from the client's side; nothing else of the flow is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (ROOT, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SHORT_CHARS = 300  # latency scenarios measure scheduling, not the engine
S3_BUCKET = "bench-enrich"
S3_DOCS = 4000
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "bench-key-id",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# --------------------------------------------------------------------------- in the child


class ClientTrace:
    """Counts and client-side times of the Batch API calls made in this process."""

    def __init__(self) -> None:
        self.submits = 0
        self.submit_429 = 0
        self.submit_seconds = 0.0
        self.polls = 0
        self.outputs = 0
        self.submit_started: list[float] = []
        self.submitted_at: dict[str, float] = {}  # batch id -> answer to its submit
        self.seen_done: dict[str, float] = {}  # batch id -> first poll that saw it terminal
        self.fetched: dict[str, float] = {}  # batch id -> output downloaded

    def install(self) -> ClientTrace:
        from batchapi.client import AsyncBatchApiClient
        from batchapi.errors import TransientApiError

        trace = self
        submit_jsonl = AsyncBatchApiClient.submit_jsonl
        get = AsyncBatchApiClient.get

        async def traced_submit(client: Any, payload: bytes, line_count: int, **kw: Any) -> Any:
            started = time.monotonic()
            trace.submits += 1
            trace.submit_started.append(started)
            try:
                batch = await submit_jsonl(client, payload, line_count, **kw)
            except TransientApiError as exc:
                if exc.status_code == 429:
                    trace.submit_429 += 1
                raise
            finally:
                trace.submit_seconds += time.monotonic() - started
            trace.submitted_at[batch.id] = time.monotonic()
            return batch

        async def traced_get(client: Any, batch_id: str) -> Any:
            trace.polls += 1
            batch = await get(client, batch_id)
            if batch.is_terminal and batch_id not in trace.seen_done:
                trace.seen_done[batch_id] = time.monotonic()
            return batch

        def traced_download(download: Any) -> Any:
            async def traced(client: Any, batch_id: str) -> Any:
                trace.outputs += 1
                result = await download(client, batch_id)
                trace.fetched[batch_id] = time.monotonic()
                return result

            return traced

        AsyncBatchApiClient.submit_jsonl = traced_submit  # type: ignore[method-assign]
        AsyncBatchApiClient.get = traced_get  # type: ignore[method-assign]
        # Whichever of the two the engine uses to download a batch's output.
        for name in ("output", "output_bytes"):
            if hasattr(AsyncBatchApiClient, name):
                setattr(
                    AsyncBatchApiClient, name, traced_download(getattr(AsyncBatchApiClient, name))
                )
        return self

    def summary(self, flow_started: float, flow_ended: float) -> dict[str, Any]:
        """Where the flow's time went, seen from the API client."""
        done = [b for b in self.submitted_at if b in self.fetched]
        out: dict[str, Any] = {
            "submits": self.submits,
            "submit_429": self.submit_429,
            "polls": self.polls,
            "outputs": self.outputs,
            "submit_ms_mean": 1000 * self.submit_seconds / max(1, self.submits),
        }
        if not done:
            return out
        first = min(self.submit_started)
        last = max(self.fetched[b] for b in done)
        residence = [self.fetched[b] - self.submitted_at[b] for b in done]
        seen = [self.seen_done[b] - self.submitted_at[b] for b in done if b in self.seen_done]
        # Open batches over time, from the client's side: submit answer to output downloaded.
        events = sorted(
            [(self.submitted_at[b], 1) for b in done] + [(self.fetched[b], -1) for b in done]
        )
        area, level, peak, previous = 0.0, 0, 0, first
        for when, step in events:
            area += level * (when - previous)
            level += step
            peak = max(peak, level)
            previous = when
        span = max(1e-9, last - first)
        out.update(
            first_submit_after=first - flow_started,
            tail_after_last_output=flow_ended - last,
            drain=last - max(self.submit_started),
            batches_span=span,
            mean_open=area / span,
            peak_open=peak,
            residence_mean=sum(residence) / len(residence),
            seen_done_mean=sum(seen) / len(seen) if seen else None,
        )
        return out


async def recorded_seconds(flow_run_id: Any) -> float | None:
    """The run's time as Prefect records it (Running to Completed): the call that started it
    returns later, once Prefect's teardown (its heartbeat thread, about 0.5 s) is done."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    if run.start_time is None or run.end_time is None:
        return None
    return (run.end_time - run.start_time).total_seconds()


def child(spec_path: str, result_path: str) -> int:
    from pipeline import _cpu_seconds, _peak_rss_mb
    from prefect import flow

    from flows.enrich import enrich_documents
    from flows.sample_corpus import DEMO_ENRICHMENTS

    spec = json.loads(Path(spec_path).read_text())
    trace = ClientTrace().install()

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    started = time.monotonic()
    warmup()
    startup = time.monotonic() - started
    started, cpu = time.monotonic(), _cpu_seconds()
    state = enrich_documents(enrichments=DEMO_ENRICHMENTS, return_state=True, **spec["flow"])
    ended = time.monotonic()
    cpu = _cpu_seconds() - cpu
    report = state.result()
    measured = {
        "seconds": ended - started,
        "recorded_seconds": asyncio.run(recorded_seconds(state.state_details.flow_run_id)),
        "cpu_seconds": cpu,
        "startup_seconds": startup,
        "report_seconds": report.seconds,
        "batches": report.batches_submitted + report.batches_reattached,
        "batches_submitted": report.batches_submitted,
        "lines": report.lines_sent,
        "rows": report.rows_in,
        "rows_enriched": report.rows_enriched,
        "rate_limited": report.rate_limited,
        "peak_rss_mb": _peak_rss_mb(),
        "trace": trace.summary(started, ended),
    }
    Path(result_path).write_text(json.dumps(measured))
    return 0


# --------------------------------------------------------------------------- in the parent


def run_flow_child(
    flow_params: dict[str, Any], work: Path, name: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    from pipeline import _child_env

    spec, result = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec.write_text(json.dumps({"flow": flow_params}))
    child_env = _child_env(work / "prefect-home")
    child_env.update(env or {})
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec), str(result)]
    started = time.monotonic()
    completed = subprocess.run(command, env=child_env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the {name} run failed (exit {completed.returncode}); see above")
    measured = json.loads(result.read_text())
    measured["process_seconds"] = time.monotonic() - started
    return measured


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


# ------------------------------------------------------------------ latency (Little's law)


@dataclass(frozen=True)
class LatencyCase:
    name: str
    latency: float
    max_in_flight: int
    batches: int  # wanted; the documents are sized to give about this many
    jitter: float = 0.0
    cap: int | None = None  # emulator --max-open-batches
    target: float | None = None

    @property
    def poll(self) -> float:
        return round(self.latency / 10, 3)

    @property
    def window(self) -> int:
        return min(self.max_in_flight, self.cap or self.max_in_flight)


LATENCY_CASES = {
    "a": LatencyCase("a", latency=3.0, max_in_flight=64, batches=320, target=0.9),
    "b": LatencyCase("b", latency=30.0, max_in_flight=500, batches=4000, target=0.9),
    "c": LatencyCase("c", latency=4.0, max_in_flight=1000, batches=1500, cap=100, target=0.8),
    "d": LatencyCase("d", latency=3.0, max_in_flight=64, batches=960, jitter=0.5),
}


def mean_latency(case: LatencyCase, seed: int, batches: int) -> float:
    """Mean seconds in progress over the emulator's batch numbers 1..batches."""
    from batchapi.emulator.config import EmulatorConfig
    from batchapi.emulator.timing import in_progress_seconds

    config = EmulatorConfig(latency=case.latency, latency_jitter=case.jitter, seed=seed)
    if batches <= 0:
        return case.latency
    return sum(in_progress_seconds(config, seq) for seq in range(1, batches + 1)) / batches


LATENCY_HEADERS = [
    "case",
    "latency s",
    "jitter",
    "mean lat s",
    "max_in_flight",
    "cap",
    "poll s",
    "docs",
    "batches",
    "flow s",
    "bound s",
    "efficiency",
    "target",
    "429s (flow)",
    "429s (emulator)",
    "polls/batch",
    "mean open",
    "peak open",
    "residence s",
    "seen done s",
    "first submit s",
    "drain s",
    "tail s",
    "flow CPU s",
    "ms CPU/batch",
]


def bench_latency_case(case: LatencyCase, args: argparse.Namespace, work: Path) -> list[str]:
    from batchapi.emulator.process import emulator_process
    from flows.backend import embedded_workers
    from flows.sample_corpus import write_corpus

    shard = args.latency_shard_size
    lines_per_doc = 3
    batches_wanted = max(1, round(case.batches * args.latency_batches_factor))
    docs = max(1, math.ceil(batches_wanted * shard / lines_per_doc))
    case_dir = work / f"latency-{case.name}"
    case_dir.mkdir(parents=True, exist_ok=True)
    source = write_corpus(str(case_dir / "docs.parquet"), docs, args.seed, SHORT_CHARS)
    extra = ["--latency", str(case.latency), "--seed", str(args.seed)]
    if case.jitter:
        extra += ["--latency-jitter", str(case.jitter)]
    if case.cap:
        extra += ["--max-open-batches", str(case.cap)]
    key = secrets.token_urlsafe(16)
    print(
        f"\n== latency {case.name}: {case.latency:g} s per batch"
        + (f", jitter {case.jitter:g}" if case.jitter else "")
        + (f", emulator cap {case.cap}" if case.cap else "")
        + f"; max_in_flight {case.max_in_flight}, poll {case.poll:g} s, {docs:,} docs of "
        f"~{SHORT_CHARS} chars in {shard}-line batches (~{batches_wanted} batches)",
        flush=True,
    )
    workers = args.emulator_workers or embedded_workers()
    flow_params: dict[str, Any] = {
        "source": source,
        "destination": str(case_dir / "out"),
        "shard_size": shard,
        "max_in_flight": case.max_in_flight,
        "poll_interval_seconds": case.poll,
        "timeout_seconds": 3600,
    }
    if args.parallel_submissions is not None:
        flow_params["parallel_submissions"] = args.parallel_submissions
    with emulator_process(api_key=key, workers=workers, extra_args=extra) as emu:
        measured = run_flow_child(
            {**flow_params, "batch_api": emu.base_url},
            case_dir,
            "flow",
            env={"BATCH_API_KEY": key},
        )
        stats = emu.stats()
    created = int(stats["batches_created"])
    mean = mean_latency(case, args.seed, created)
    bound = created * mean / case.window
    efficiency = bound / measured["seconds"]
    trace = measured["trace"]
    row = [
        case.name,
        f"{case.latency:g}",
        f"{case.jitter:g}",
        f"{mean:.2f}",
        str(case.max_in_flight),
        str(case.cap or "-"),
        f"{case.poll:g}",
        f"{docs:,}",
        str(measured["batches"]),
        f"{measured['seconds']:.1f}",
        f"{bound:.1f}",
        f"{efficiency:.2f}",
        "-" if case.target is None else f">= {case.target:g}",
        str(measured["rate_limited"]),
        str(stats.get("rejected_open_cap", 0)),
        f"{trace['polls'] / max(1, measured['batches']):.1f}",
        _fmt(trace.get("mean_open")),
        str(trace.get("peak_open", "-")),
        _fmt(trace.get("residence_mean"), ".2f"),
        _fmt(trace.get("seen_done_mean"), ".2f"),
        _fmt(trace.get("first_submit_after")),
        _fmt(trace.get("drain")),
        _fmt(trace.get("tail_after_last_output")),
        f"{measured['cpu_seconds']:.1f}",
        f"{1000 * measured['cpu_seconds'] / max(1, measured['batches']):.1f}",
    ]
    print(
        f"   flow {measured['seconds']:.1f} s for {measured['batches']} batches "
        f"(emulator created {created}); bound {bound:.1f} s; efficiency {efficiency:.2f}"
        f"; Prefect records {_fmt(measured.get('recorded_seconds'))} s"
        f"; server start {measured['startup_seconds']:.1f} s; submit {trace['submit_ms_mean']:.1f}"
        f" ms mean; polls {trace['polls']}, outputs {trace['outputs']}",
        flush=True,
    )
    _note_findings(case, row, measured)
    return row


def _note_findings(case: LatencyCase, row: list[str], measured: dict[str, Any]) -> None:
    """Append the row to a findings file as soon as it is measured (optional)."""
    path = os.environ.get("BENCH_FINDINGS")
    if not path:
        return
    with open(path, "a") as out:
        out.write(
            f"- latency {case.name} ({time.strftime('%H:%M:%S')} UTC): "
            + ", ".join(f"{h}={v}" for h, v in zip(LATENCY_HEADERS, row, strict=True))
            + f"; trace={json.dumps(measured['trace'])}\n"
        )


def run_latency(args: argparse.Namespace) -> list[list[str]]:
    from pipeline import _table

    work = Path(tempfile.mkdtemp(prefix="bench-latency-", dir=args.workdir))
    rows: list[list[str]] = []
    try:
        for name in args.latency_cases:
            rows.append(bench_latency_case(LATENCY_CASES[name], args, work))
            print(_table(LATENCY_HEADERS, rows[-1:]), flush=True)
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if rows:
        print("\nLatency scenarios (bound = batches x mean latency / min(max_in_flight, cap)):")
        print(_table(LATENCY_HEADERS, rows))
    return rows


# --------------------------------------------------------------------------- S3


@dataclass
class S3Case:
    name: str
    s3: bool
    proxy_ms: float | None = None  # None: straight to moto
    target: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)  # measured, one per round
    requests: list[int] = field(default_factory=list)
    by_method: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any]:
        return min(self.rounds, key=lambda m: m["seconds"])


S3_HEADERS = [
    "destination",
    "flow s (best)",
    "each round",
    "ratio to local",
    "ratio per round",
    "target",
    "batches",
    "S3 requests",
    "requests/batch",
    "by method",
    "flow CPU s",
    "first submit s",
    "tail s",
]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_s3(args: argparse.Namespace) -> list[list[str]]:
    import boto3
    from moto.server import ThreadedMotoServer
    from pipeline import _table

    from flows.sample_corpus import write_corpus

    # The proxy is the tests' own: it lives with them and is imported from there.
    sys.path.insert(0, str(ROOT / "tests" / "flows"))
    from fault_proxy import LoopbackProxy

    docs = args.s3_docs
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.workdir))
    delayed = f"s3 via proxy +{args.s3_delay_ms:g} ms"
    cases = [
        S3Case("local", s3=False),
        S3Case("s3 (moto)", s3=True, target=1.3),
        S3Case("s3 via proxy +0 ms", s3=True, proxy_ms=0.0),
        S3Case(delayed, s3=True, proxy_ms=args.s3_delay_ms, target=1.5),
    ]
    # moto's HTTP server logs every request on stderr otherwise.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=AWS_TEST_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=S3_BUCKET)
        source = write_corpus(str(work / "corpus" / "docs.parquet"), docs, args.seed, args.chars)
        print(
            f"\n== S3 destination: {docs:,} documents of ~{args.chars} chars (source local), "
            f"embedded emulator, poll {args.poll} s, {args.s3_rounds} round(s) of every "
            f"destination; moto on {endpoint}",
            flush=True,
        )
        for round_number in range(args.s3_rounds):
            for number, case in enumerate(cases):
                name = f"s3-{round_number}-{number}"
                params: dict[str, Any] = {
                    "source": source,
                    "batch_api": "embedded",
                    "shard_size": args.shard_size,
                    "poll_interval_seconds": args.poll,
                    "group_size": args.group_size,
                }
                if args.max_in_flight is not None:
                    params["max_in_flight"] = args.max_in_flight
                requests = None
                if not case.s3:
                    params["destination"] = str(work / f"out-{name}")
                    measured = run_flow_child(params, work, name)
                else:
                    params["destination"] = f"s3://{S3_BUCKET}/{name}/enriched"
                    if case.proxy_ms is None:
                        env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": endpoint}
                        measured = run_flow_child(params, work, name, env)
                    else:
                        with LoopbackProxy(endpoint, delay=case.proxy_ms / 1000) as proxy:
                            env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": proxy.url}
                            measured = run_flow_child(params, work, name, env)
                            requests = proxy.total_requests
                            case.requests.append(requests)
                            case.by_method = dict(proxy.requests)
                case.rounds.append(measured)
                print(
                    f"   round {round_number + 1} {case.name}: flow {measured['seconds']:.1f} s, "
                    f"{measured['batches']} batches"
                    + ("" if requests is None else f", {requests} S3 requests"),
                    flush=True,
                )
    finally:
        moto.stop()
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    local = cases[0]
    rows = []
    for case in cases:
        best = case.best
        batches = max(1, best["batches"])
        per_round = [
            m["seconds"] / base["seconds"]
            for m, base in zip(case.rounds, local.rounds, strict=True)
        ]
        requests = max(case.requests) if case.requests else None
        rows.append(
            [
                case.name,
                f"{best['seconds']:.1f}",
                " ".join(f"{m['seconds']:.1f}" for m in case.rounds),
                f"{best['seconds'] / local.best['seconds']:.2f}",
                " ".join(f"{r:.2f}" for r in per_round),
                "-" if case.target is None else f"<= {case.target:g}",
                str(best["batches"]),
                "-" if requests is None else str(requests),
                "-" if requests is None else f"{requests / batches:.2f}",
                " ".join(f"{k}:{v}" for k, v in sorted(case.by_method.items())) or "-",
                f"{best['cpu_seconds']:.1f}",
                _fmt(best["trace"].get("first_submit_after")),
                _fmt(best["trace"].get("tail_after_last_output")),
            ]
        )
    print(
        "\nS3 destination (ratio = best flow s / best flow s of the local destination; per "
        "round: against that round's local run):"
    )
    print(_table(S3_HEADERS, rows))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3]))
    raise SystemExit("run bench/pipeline.py --scenario latency|s3 (this module holds its parts)")
