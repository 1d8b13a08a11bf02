"""End-to-end benchmark: the `enrich-documents` flow against a plain in-process baseline.

Scenarios (`--scenario`, see bench/README.md):

- scale (default): for each size it generates N documents (~2 KB of text each) as Parquet,
  then, each in a fresh subprocess: the flow on the embedded emulator (no latency, all three
  models), with a private PREFECT_HOME, the temporary Prefect server started by a warm-up flow
  first, so "flow s" is the enrichment itself and "start s" the one-off server start; and a
  baseline with no Prefect run and no HTTP that reads the same Parquet in groups, builds the
  same request lines (`tasks.shard.build_group_lines`), runs the emulator's engine on each
  body in-process, and writes the same enriched Parquet (`tasks.merge`). Both outputs are
  compared. Peak RSS is each subprocess's own (`getrusage(RUSAGE_SELF)`); its children's (the
  temporary Prefect server and the embedded emulator's processes) is reported apart.
- cpu: the 10,000-document scale row alone (flow CPU ms per batch).
- latency, s3: `bench/scenarios.py` (Little's-law efficiency against an emulator with
  latency; a local vs an `s3://` destination on moto).

    python bench/pipeline.py                              # 10k and 100k documents
    python bench/pipeline.py --sizes 10000                # one size
    python bench/pipeline.py --million                    # adds 1,000,000
    python bench/pipeline.py --scenario latency s3 cpu    # the other scenarios
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Task names (a run's name starts with its task's). prepare-group runs once per group (side by
# side, `parallel_groups`), run-batches once per run for as long as batches are open, and
# merge-group once per group while run-batches goes on: summed task seconds can exceed flow s.
FLOW_STAGES = (
    "validate-source",
    "prepare-group",
    "run-batches",
    "merge-group",
)
BASELINE_STAGES = ("read", "build-lines", "engine", "merge", "write")
DEFAULT_SIZES = (10_000, 100_000)
SCENARIOS = ("scale", "cpu", "latency", "s3", "all")
CPU_SIZE = 10_000


# --------------------------------------------------------------------------- children


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _ChildrenPeak:
    """Peak RSS of a child run's descendants: summed, and per kind (Prefect server, emulator).

    Each child of `pid` is counted with its whole subtree (the emulator's engine workers belong
    to the emulator) and labelled by its command line. It samples from the parent process, so
    its own CPU is not counted in the measured run's.
    """

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self._pid = pid
        self.peak_mb = 0.0
        self.peak_by_kind_mb: dict[str, float] = {"prefect": 0.0, "emulator": 0.0}
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _kind(process: Any) -> str:
        try:
            command = " ".join(process.cmdline())
        except Exception:
            return "prefect"
        return "emulator" if "batchapi.emulator" in command else "prefect"

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop.wait(self._every):
            by_kind = dict.fromkeys(self.peak_by_kind_mb, 0)
            try:
                children = root.children()
            except psutil.Error:
                return
            for child in children:
                kind = self._kind(child)
                try:
                    subtree = [child, *child.children(recursive=True)]
                except psutil.Error:
                    continue
                for process in subtree:
                    try:
                        by_kind[kind] += process.memory_info().rss
                    except psutil.Error:
                        continue
            self.peak_mb = max(self.peak_mb, sum(by_kind.values()) / 2**20)
            for kind, rss in by_kind.items():
                self.peak_by_kind_mb[kind] = max(self.peak_by_kind_mb[kind], rss / 2**20)

    def __enter__(self) -> _ChildrenPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _stage_seconds(flow_run_id: Any) -> dict[str, float]:
    """Wall seconds (first start to final state) per task, summed by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    seconds = dict.fromkeys(FLOW_STAGES, 0.0)
    seconds["other tasks"] = 0.0
    async with get_client() as client:
        offset = 0
        while True:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
                offset=offset,
            )
            for run in runs:
                if run.start_time is None or run.end_time is None:
                    continue
                elapsed = (run.end_time - run.start_time).total_seconds()
                stage = next((s for s in FLOW_STAGES if run.name.startswith(s)), "other tasks")
                seconds[stage] += elapsed
            if len(runs) < 200:
                return seconds
            offset += len(runs)


def child_flow(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from prefect import flow

    from flows.enrich import enrich_documents
    from flows.sample_corpus import DEMO_ENRICHMENTS

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    from scenarios import ClientTrace

    trace = ClientTrace().install()
    started = time.monotonic()
    warmup()
    startup = time.monotonic() - started
    started, cpu = time.monotonic(), _cpu_seconds()
    extra: dict[str, Any] = {}
    for name in ("parallel_groups", "max_in_flight", "parallel_submissions"):
        if getattr(args, name) is not None:
            extra[name] = getattr(args, name)
    state = enrich_documents(
        source=args.source,
        destination=args.destination,
        enrichments=DEMO_ENRICHMENTS,
        batch_api="embedded",
        shard_size=args.shard_size,
        poll_interval_seconds=args.poll,
        group_size=args.group_size,
        return_state=True,
        **extra,
    )
    ended = time.monotonic()
    seconds, cpu = ended - started, _cpu_seconds() - cpu
    report = state.result()
    stages = asyncio.run(_stage_seconds(state.state_details.flow_run_id))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "startup_seconds": startup,
        "stages": stages,
        "batches": report.batches_submitted + report.batches_reattached,
        "lines": report.lines_sent,
        "rows": report.rows_in,
        "peak_rss_mb": _peak_rss_mb(),
        "output": report.output_path,
        "trace": trace.summary(started, ended),
    }


def child_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from batchapi.emulator.engine import run
    from batchapi.models import BODY_ADAPTER
    from flows.sample_corpus import DEMO_ENRICHMENTS
    from tasks.merge import OUTPUT_FILE, ROW_GROUP_ROWS, merge_group, output_schema, results_for
    from tasks.read import iter_groups, resolve_source
    from tasks.shard import build_group_lines
    from tasks.spec import parse_enrichments
    from tasks.state import results_table

    started, cpu = time.monotonic(), _cpu_seconds()
    stages = dict.fromkeys(BASELINE_STAGES, 0.0)
    enrichments = parse_enrichments(DEMO_ENRICHMENTS)
    source = resolve_source(args.source)
    output = Path(args.destination) / OUTPUT_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    rows = lines_sent = 0
    groups = iter_groups(source, args.group_size)
    index = 0
    while True:
        mark = time.monotonic()
        group = next(groups, None)
        stages["read"] += time.monotonic() - mark
        if group is None:
            break
        mark = time.monotonic()
        lines = build_group_lines(group, index, enrichments, source.id_column, source.text_column)
        stages["build-lines"] += time.monotonic() - mark
        mark = time.monotonic()
        decoded = []
        for custom_id, line in lines.requests.items():
            body = BODY_ADAPTER.validate_python(json.loads(line)["body"])
            decoded.append(
                {
                    "custom_id": custom_id,
                    "result": run(body).model_dump_json(),
                    "error": None,
                    "error_code": None,
                    "attempts": 1,
                }
            )
        lines_sent += len(decoded)
        stages["engine"] += time.monotonic() - mark
        mark = time.monotonic()
        results = results_for(lines, [results_table(decoded)])
        if writer is None:
            metadata = {"batch_enrich.backend": "baseline (engine in-process)"}
            schema = output_schema(group.schema, enrichments, metadata)
            writer = pq.ParquetWriter(output, schema, compression="zstd")
        enriched = merge_group.fn(group, lines, results, enrichments, writer.schema)
        stages["merge"] += time.monotonic() - mark
        mark = time.monotonic()
        writer.write_table(enriched, row_group_size=ROW_GROUP_ROWS)
        stages["write"] += time.monotonic() - mark
        rows += group.num_rows
        index += 1
    mark = time.monotonic()
    if writer is not None:
        writer.close()
    stages["write"] += time.monotonic() - mark
    return {
        "seconds": time.monotonic() - started,
        "cpu_seconds": _cpu_seconds() - cpu,
        "stages": stages,
        "lines": lines_sent,
        "rows": rows,
        "peak_rss_mb": _peak_rss_mb(),
        "output": str(output),
    }


# --------------------------------------------------------------------------- parent


def _child_env(prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


def run_child(kind: str, args: argparse.Namespace, source: str, work: Path) -> dict[str, Any]:
    result = work / f"{kind}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--source",
        source,
        "--destination",
        str(work / f"{kind}-output"),
        "--result",
        str(result),
        "--group-size",
        str(args.group_size),
        "--shard-size",
        str(args.shard_size),
        "--poll",
        str(args.poll),
    ]
    for option in ("parallel_groups", "max_in_flight", "parallel_submissions"):
        if getattr(args, option) is not None:
            command += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    started = time.monotonic()
    child = subprocess.Popen(command, env=_child_env(work / "prefect-home"))
    with _ChildrenPeak(child.pid) as servers:
        returncode = child.wait()
    if returncode != 0:
        raise SystemExit(f"the {kind} run failed (exit {returncode}); see above")
    measured = json.loads(result.read_text())
    measured["process_seconds"] = time.monotonic() - started
    measured["server_peak_rss_mb"] = servers.peak_mb
    measured["prefect_peak_rss_mb"] = servers.peak_by_kind_mb["prefect"]
    measured["emulator_peak_rss_mb"] = servers.peak_by_kind_mb["emulator"]
    return measured


def _aligned_batches(path: str, columns: list[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=4096, columns=columns)


def same_output(flow_path: str, baseline_path: str) -> bool:
    """Both files hold the same rows in the same order (metadata aside), read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(flow_path)
    if schema.remove_metadata() != pq.read_schema(baseline_path).remove_metadata():
        return False
    left, right = pa.table({}), pa.table({})
    flows = _aligned_batches(flow_path, schema.names)
    bases = _aligned_batches(baseline_path, schema.names)
    while True:
        if left.num_rows == 0:
            batch = next(flows, None)
            left = pa.Table.from_batches([batch]) if batch is not None else left
        if right.num_rows == 0:
            batch = next(bases, None)
            right = pa.Table.from_batches([batch]) if batch is not None else right
        if left.num_rows == 0 or right.num_rows == 0:
            return left.num_rows == right.num_rows
        size = min(left.num_rows, right.num_rows)
        if not left.slice(0, size).equals(right.slice(0, size)):
            return False
        left, right = left.slice(size), right.slice(size)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def summary_row(size: int, flow: dict[str, Any], base: dict[str, Any], same: bool) -> list[str]:
    return [
        f"{size:,}",
        f"{flow['seconds']:.1f}",
        f"{base['seconds']:.1f}",
        f"{flow['seconds'] / base['seconds']:.2f}",
        f"{size / flow['seconds']:.0f}",
        f"{size / base['seconds']:.0f}",
        f"{flow['batches'] / flow['seconds']:.1f}",
        f"{flow['cpu_seconds']:.0f}",
        f"{base['cpu_seconds']:.0f}",
        f"{1000 * flow['cpu_seconds'] / max(1, flow['batches']):.1f}",
        f"{flow['trace']['polls'] / max(1, flow['batches']):.1f}",
        f"{flow['peak_rss_mb']:.0f}",
        f"{base['peak_rss_mb']:.0f}",
        f"{flow['server_peak_rss_mb']:.0f}",
        f"{flow['prefect_peak_rss_mb']:.0f}",
        f"{flow['emulator_peak_rss_mb']:.0f}",
        f"{flow['startup_seconds']:.1f}",
        "yes" if same else "NO",
    ]


SUMMARY_HEADERS = [
    "docs",
    "flow s",
    "baseline s",
    "ratio",
    "flow docs/s",
    "base docs/s",
    "batches/s",
    "flow CPU s",
    "base CPU s",
    "flow CPU ms/batch",
    "polls/batch",
    "flow RSS MB",
    "base RSS MB",
    "children RSS MB",
    "of which Prefect server",
    "of which emulator",
    "start s",
    "same output",
]


def stage_table(flow: dict[str, Any], base: dict[str, Any]) -> str:
    flow_stages = [(k, v) for k, v in flow["stages"].items() if v]
    base_stages = list(base["stages"].items())
    rows = []
    for i in range(max(len(flow_stages), len(base_stages))):
        f = flow_stages[i] if i < len(flow_stages) else ("", None)
        b = base_stages[i] if i < len(base_stages) else ("", None)
        rows.append(
            [
                f[0],
                "" if f[1] is None else f"{f[1]:.1f}",
                b[0],
                "" if b[1] is None else f"{b[1]:.1f}",
            ]
        )
    return _table(["flow task", "task s", "baseline stage", "s"], rows)


def bench_size(size: int, args: argparse.Namespace) -> list[str]:
    from flows.sample_corpus import write_corpus

    work = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{size}-", dir=args.workdir))
    try:
        started = time.monotonic()
        source = write_corpus(str(work / "corpus" / "docs.parquet"), size, args.seed, args.chars)
        print(f"\n== {size:,} documents (corpus written in {time.monotonic() - started:.1f} s)")
        flow = run_child("flow", args, source, work)
        print(f"   flow      {flow['seconds']:.1f} s ({flow['batches']} batches)")
        base = run_child("baseline", args, source, work)
        print(f"   baseline  {base['seconds']:.1f} s")
        same = same_output(flow["output"], base["output"])
        row = summary_row(size, flow, base, same)
        print()
        print(_table(SUMMARY_HEADERS, [row]))
        print()
        print(stage_table(flow, base))
        return row
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_scale(sizes: list[int], args: argparse.Namespace) -> list[list[str]]:
    window = "the flow's default" if args.max_in_flight is None else args.max_in_flight
    print(
        f"enrich-documents vs in-process baseline: 3 enrichments, {args.chars}-char documents, "
        f"groups of {args.group_size}, {args.shard_size}-line batches, "
        f"max_in_flight {window}, poll {args.poll} s"
    )
    print(
        "flow task s: summed over the task's runs; prepare-group and merge-group run while\n"
        "run-batches (one per run) goes on, so the sums can exceed flow s."
    )
    rows = [bench_size(size, args) for size in sizes]
    if len(rows) > 1:
        print("\nAll sizes:")
        print(_table(SUMMARY_HEADERS, rows))
    return rows


def _code_version() -> str:
    """The commit measured, and the files of the flow that differ from it."""
    if os.environ.get("BENCH_CODE_VERSION"):  # a copy outside the repository says what it is
        return os.environ["BENCH_CODE_VERSION"]
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "tasks", "flows", "batchapi"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = sorted(line[3:] for line in changed if line.strip())
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def _conditions() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, {os.cpu_count()} cores, "
        f"load average {load}, Python {sys.version.split()[0]}, code {_code_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        nargs="+",
        choices=SCENARIOS,
        default=["scale"],
        help="scale: --sizes (default 10k and 100k) against the baseline; cpu: the 10k row "
        "alone (flow CPU ms per batch); latency: Little's-law efficiency against an emulator "
        "with latency; s3: local vs s3:// destination on moto, plain and through a delaying "
        "proxy; all: latency, s3, then scale (default: scale)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--million", action="store_true", help="also run 1,000,000 documents")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--workdir", default=None, help="where temporary folders go")
    parser.add_argument("--chars", type=int, default=2000, help="characters per document")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--group-size", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="default: the flow's own default"
    )
    parser.add_argument(
        "--parallel-submissions", type=int, default=None, help="default: the flow's own default"
    )
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument(
        "--parallel-groups", type=int, default=None, help="default: the flow's own default"
    )
    latency = parser.add_argument_group("latency scenarios")
    latency.add_argument(
        "--latency-cases",
        nargs="+",
        choices=["a", "b", "c", "d"],
        default=["a", "b", "c", "d"],
        help="a: 3 s, window 64; b: 30 s, window 500; c: 4 s, emulator cap 100, window 1000; "
        "d: 3 s with jitter 0.5 and stragglers, window 64",
    )
    latency.add_argument(
        "--latency-batches-factor",
        type=float,
        default=1.0,
        help="scale every case's batch count (0.25 for a quick look)",
    )
    latency.add_argument(
        "--latency-shard-size", type=int, default=12, help="lines per batch (default 12)"
    )
    latency.add_argument(
        "--emulator-workers",
        type=int,
        default=None,
        help="--workers of the emulator CLI (default: the embedded backend's, one per core up "
        "to 4, so its engine runs beside its HTTP server, not under the same lock)",
    )
    s3 = parser.add_argument_group("s3 scenario")
    s3.add_argument("--s3-docs", type=int, default=4000)
    s3.add_argument("--s3-delay-ms", type=float, default=30.0)
    s3.add_argument(
        "--s3-rounds",
        type=int,
        default=2,
        help="times every destination is measured, in turn (the best is compared)",
    )
    parser.add_argument("--child", choices=["flow", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--destination", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        measured = (child_flow if args.child == "flow" else child_baseline)(args)
        Path(args.result).write_text(json.dumps(measured))
        return 0

    import scenarios

    chosen = set(args.scenario)
    if "all" in chosen:
        chosen = {"latency", "s3", "scale"}
    print(f"conditions: {_conditions()}")
    if "latency" in chosen:
        scenarios.run_latency(args)
        print(f"conditions after: {_conditions()}")
    if "s3" in chosen:
        scenarios.run_s3(args)
        print(f"conditions after: {_conditions()}")
    if "scale" in chosen or "cpu" in chosen:
        sizes = list(args.sizes) if "scale" in chosen else [CPU_SIZE]
        sizes += [1_000_000] if args.million else []
        run_scale(sizes, args)
        print(f"conditions after: {_conditions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
