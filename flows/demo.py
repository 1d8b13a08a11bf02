"""`make demo`: generate a sample corpus, enrich it on the embedded emulator, show the result.

    python -m flows.demo [--docs 3000] [--output demo-output] [--mode full|incremental]
                         [--output-format parquet|delta]

The corpus goes to OUTPUT/corpus/, the enriched dataset to OUTPUT/enriched/ (a Delta table in
OUTPUT/enriched-delta/ with --output-format delta), sibling folders; the run's working state
goes beside them, in OUTPUT/_batch-enrich/.

Works from a fresh clone with nothing started: the flow starts a temporary Prefect server and
the embedded Batch API emulator for the run.
"""

from __future__ import annotations

import os
from pathlib import Path

# Prefect reads its settings when it is imported: set the defaults first.
os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import argparse
import json
import shlex
import sys
import time
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from flows.sample_corpus import DEMO_ENRICHMENTS, write_corpus

DEFAULT_OUTPUT = "demo-output"
PREVIEW_ROWS = 5
TEXT_CHARS = 70


def _short(value: str | None, limit: int = TEXT_CHARS) -> str:
    if value is None:
        return "-"
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def ensure_corpus(path: Path, docs: int) -> bool:
    """Write the corpus unless it is already there; True when it was written now."""
    if path.exists():
        return False
    write_corpus(str(path), docs)
    return True


def _entities(items: list[dict[str, Any]] | None, limit: int = 4) -> str:
    if not items:
        return "-"
    shown = ", ".join(f"{e['text']} ({e['type']})" for e in items[:limit])
    return shown + (f", +{len(items) - limit} more" if len(items) > limit else "")


def _errors(row: dict[str, Any]) -> str:
    found = [f"{k[: -len('_error')]}: {v}" for k, v in row.items() if k.endswith("_error") and v]
    return _short("; ".join(found)) if found else "none"


def open_output(destination: Path, output_format: str = "parquet") -> ds.Dataset:
    """The enriched dataset as pyarrow sees it, in either output format."""
    if output_format == "delta":
        from deltalake import DeltaTable

        return DeltaTable(str(destination)).to_pyarrow_dataset()
    return ds.dataset(str(destination), format="parquet")


def print_preview(
    destination: Path, rows: int = PREVIEW_ROWS, output_format: str = "parquet"
) -> int:
    """Print a few enriched rows; returns the dataset's row count."""
    dataset = open_output(destination, output_format)
    total = dataset.count_rows()
    head = dataset.head(rows).to_pylist()
    print(f"\nPreview ({len(head)} of {total} rows):")
    for row in head:
        scores = row.get("topic_scores") or []
        top = max(scores, key=lambda pair: pair[1])[1] if scores else None
        label = f"{row.get('topic')} ({top:.2f})" if top is not None else str(row.get("topic"))
        print(f"\n  {row['id']}  [{row['kind']}]  {_short(row['text'])}")
        print(f"    summary : {_short(row.get('summary'))}")
        print(f"    topic   : {label}")
        print(f"    entities: {_short(_entities(row.get('entities')), 100)}")
        print(f"    errors  : {_errors(row)}")
    return total


def print_report(report: Any) -> None:
    print(
        f"\nRun report: {report.rows_in} rows in, {report.rows_enriched} enriched without "
        f"error, {report.groups} group(s), {report.batches_submitted} batches submitted, "
        f"{report.lines_sent} lines sent, {report.seconds:.1f} s in the flow"
    )
    for name, counts in report.enrichments.items():
        print(
            f"  {name:<9} ok {counts.ok:>6}  errors {counts.errors:>4}  "
            f"carried over {counts.carried_over:>4}"
        )


def demo_job(output: Path, mode: str = "full", output_format: str = "parquet") -> dict[str, Any]:
    """The demo's parameters: the same JSON `python -m flows.enrich --params` takes.

    Source and destination are sibling folders (a destination inside the source is refused).
    """
    job = {
        "source": (output / "corpus" / "docs.parquet").as_posix(),
        "destination": (output / "enriched").as_posix(),
        "enrichments": DEMO_ENRICHMENTS,
        "batch_api": "embedded",
        "max_in_flight": 16,
        "poll_interval_seconds": 0.2,
        "mode": mode,
    }
    if output_format != "parquet":
        job["destination"] = (output / f"enriched-{output_format}").as_posix()
        job["output_format"] = output_format
    return job


def reading_hints(destination: Path, output_format: str) -> str:
    path = destination.as_posix()
    if output_format == "delta":
        return (
            "  from deltalake import DeltaTable\n"
            f"  table = DeltaTable('{path}').to_pyarrow_table()   # version=N for an older one\n"
            f"  frame = polars.scan_delta('{path}').collect()\n"
            f"  dataset = DeltaTable('{path}').to_pyarrow_dataset()\n"
            "  duckdb.sql('select count(*) from dataset')"
        )
    return (
        "  import pyarrow.dataset as ds\n"
        f"  table = ds.dataset('{path}').to_table()\n"
        f"  frame = polars.scan_parquet('{path}').collect()\n"
        f"  duckdb.sql(\"select count(*) from read_parquet('{path}/*.parquet')\")"
    )


def closing_hints(
    output: Path, python: str, output_format: str = "parquet"
) -> list[tuple[str, list[str]]]:
    """What to try next: (why, command), each a command that runs as printed."""
    job = (output / "job.json").as_posix()
    demo = [python, "-m", "flows.demo"] + (
        [] if output == Path(DEFAULT_OUTPUT) else ["--output", output.as_posix()]
    )
    if output_format != "parquet":
        demo += ["--output-format", output_format]
    return [
        (
            "Run it again, sending only new or changed documents (here: none)",
            [*demo, "--mode", "incremental"],
        ),
        (
            "Run the same job from the command line, changing any parameter",
            [python, "-m", "flows.enrich", "--params", job, "--mode", "incremental"],
        ),
        ("See every parameter and the job file's format", [python, "-m", "flows.enrich", "--help"]),
    ]


def _python() -> str:
    """The interpreter as the user can type it: relative to the working directory if inside."""
    executable = Path(sys.executable)
    try:
        return executable.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(executable)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--docs", type=int, default=3000, help="documents to generate")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder for corpus and result")
    parser.add_argument(
        "--mode",
        choices=["full", "incremental"],
        default="full",
        help="incremental: send only documents that are new or changed since the last run",
    )
    parser.add_argument(
        "--output-format",
        choices=["parquet", "delta"],
        default="parquet",
        help="parquet: OUTPUT/enriched/enriched.parquet; delta: a Delta table in "
        "OUTPUT/enriched-delta/",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    output = Path(args.output)
    job = demo_job(output, args.mode, args.output_format)
    corpus = Path(job["source"])
    destination = Path(job["destination"])
    if ensure_corpus(corpus, args.docs):
        print(f"Generated {args.docs} sample documents in {corpus}")
    else:
        print(
            f"Using the existing corpus {corpus} ({pq.ParquetFile(corpus).metadata.num_rows} rows)"
        )

    print("Starting Prefect and the embedded Batch API emulator, then enriching ...")
    from flows.enrich import enrich_documents

    (output / "job.json").write_text(json.dumps(job, indent=2) + "\n")
    started = time.monotonic()
    report = enrich_documents(**job)
    print(f"Done in {time.monotonic() - started:.0f} s (including Prefect's start).")
    print(f"\nEnriched dataset: {report.output_path}")
    total = print_preview(destination, output_format=args.output_format)
    print(f"\nRows written: {total}")
    print_report(report)
    print(f"\nRead it with (README, Output):\n{reading_hints(destination, args.output_format)}")
    for why, command in closing_hints(output, _python(), args.output_format):
        print(f"\n{why}:\n  {shlex.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
