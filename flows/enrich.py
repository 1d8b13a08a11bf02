"""The `enrich-documents` flow: source -> shards -> batches -> enriched Parquet dataset.

Run it from a shell with `python -m flows.enrich --params job.json` (the same JSON as a
deployment's parameters), from a deployment, or by calling `enrich_documents(...)`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from batchapi.models import BatchLimits
from flows.backend import Backend, resolve_backend
from flows.report import EnrichmentCounts, EnrichReport
from tasks.batch import RETRYABLE_LINE_CODES, run_shards
from tasks.merge import OutputWriter, merge_group, output_schema, results_for
from tasks.read import Source, iter_groups, validate_source
from tasks.shard import GroupLines, build_group_lines, plan_shards
from tasks.spec import Enrichment, parse_enrichments, spec_hash
from tasks.state import RunState
from tasks.storage import StorageSettings

DEFAULT_TIMEOUT_SECONDS = 6 * 3600


def _polling_window(poll_interval: float) -> float:
    """How long one `run-batches` attempt polls before handing back to Prefect for a retry."""
    return min(60.0, max(5.0, 10 * poll_interval))


@task(name="prepare-group", cache_policy=NO_CACHE)
def prepare_group(
    group: pa.Table,
    index: int,
    enrichments: list[Enrichment],
    source: Source,
    state: RunState,
    incremental: bool,
) -> GroupLines:
    """Build the group's request lines; in incremental mode, carry over unchanged results."""
    lines = build_group_lines(group, index, enrichments, source.id_column, source.text_column)
    previous = state.previous_results() if incremental else None
    if previous is not None:
        for custom_id, row in previous.lookup(list(lines.requests)).items():
            if row["error"] is None or row["error_code"] not in RETRYABLE_LINE_CODES:
                lines.known[custom_id] = row
                lines.carried_over[lines.enrichment_of(custom_id)] += 1
    return lines


def _enrich_group(
    lines: GroupLines,
    state: RunState,
    backend: Backend,
    limits: BatchLimits,
    options: dict[str, Any],
    report: EnrichReport,
) -> pa.Table:
    """All rounds of one group: send what is pending, retry retryable line failures."""
    recorded: list[pa.Table] = []
    pending = [c for c in lines.requests if c not in lines.known]
    poll = options["poll_interval_seconds"]
    window = _polling_window(poll)
    runner = run_shards.with_options(
        retries=math.ceil(options["timeout_seconds"] / window) + 10,
        retry_delay_seconds=poll,
    )
    for attempt in range(1, options["max_line_attempts"] + 1):
        if not pending:
            break
        shards = plan_shards(lines, pending, attempt, limits, state)
        round_report = runner.with_options(task_run_name=f"run-batches-g{lines.index}-a{attempt}")(
            shards,
            state,
            backend.api,
            options["max_in_flight"],
            poll,
            options["deadline"],
            options["timeout_seconds"],
            window,
            run_started=options["run_started"],
        )
        report.batches_submitted += round_report.submitted
        report.batches_reattached += round_report.reattached
        report.lines_sent += sum(len(s.custom_ids) for s in shards)
        report.prompt_tokens += round_report.prompt_tokens
        tables = [state.read_results(s.shard_id) for s in shards]
        round_results = pa.concat_tables([t for t in tables if t is not None])
        recorded.append(round_results)
        codes = round_results.column("error_code").to_pylist()
        ids = round_results.column("custom_id").to_pylist()
        pending = [c for c, code in zip(ids, codes, strict=True) if code in RETRYABLE_LINE_CODES]
    results = results_for(lines, recorded)
    state.write_group(lines.key, results)
    return results


def _count(enriched: pa.Table, enrichments: list[Enrichment], report: EnrichReport) -> None:
    clean = None
    for enrichment in enrichments:
        errors = enriched.column(f"{enrichment.name}_error")
        counts = report.enrichments.setdefault(enrichment.name, EnrichmentCounts())
        counts.errors += len(errors) - errors.null_count
        counts.ok += errors.null_count
        ok = pc.is_null(errors)
        clean = ok if clean is None else pc.and_(clean, ok)
    report.rows_enriched += pc.sum(pc.cast(clean, pa.int64())).as_py() or 0


def _provenance(
    backend: Backend, enrichments: list[Enrichment], state: RunState, mode: str
) -> dict[str, str]:
    return {
        "batch_enrich.backend": backend.label,
        "batch_enrich.flow_run_id": str(flow_run.get_id() or ""),
        "batch_enrich.spec_hash": spec_hash(enrichments),
        "batch_enrich.enrichments": json.dumps([e.model_dump(mode="json") for e in enrichments]),
        "batch_enrich.generation": str(state.generation),
        "batch_enrich.mode": mode,
        "batch_enrich.written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@flow(name="enrich-documents", log_prints=False)
def enrich_documents(
    source: Annotated[
        str,
        Field(
            description="Parquet file, folder or glob (local or s3://), or an "
            "s3://bucket/prefix/ of .txt/.md/.json objects."
        ),
    ],
    destination: Annotated[
        str, Field(description="Folder (local or s3://) that receives the enriched dataset.")
    ],
    enrichments: Annotated[
        list[Enrichment],
        Field(
            description="What to add: each item has a name (the output column) and a model "
            "(extract, summarize or classify) with that model's fields."
        ),
    ],
    id_column: str = "id",
    text_column: str = "text",
    batch_api: Annotated[
        str,
        Field(
            description="'embedded' (local heuristic emulator), a BatchApi block name, or an "
            "http(s):// base URL with the key in BATCH_API_KEY."
        ),
    ] = "embedded",
    shard_size: Annotated[
        int | None, Field(ge=1, description="Lines per batch; default: the block's limit.")
    ] = None,
    max_in_flight: Annotated[int, Field(ge=1, description="Batches open at once.")] = 8,
    poll_interval_seconds: Annotated[
        float | None, Field(gt=0, description="Wait between polls; default: the block's.")
    ] = None,
    timeout_seconds: Annotated[
        float, Field(gt=0, description="Give up waiting after this long; rerun to resume.")
    ] = DEFAULT_TIMEOUT_SECONDS,
    mode: Annotated[
        Literal["full", "incremental"],
        Field(description="incremental: reuse results of unchanged documents."),
    ] = "full",
    max_line_attempts: Annotated[
        int, Field(ge=1, le=10, description="Sends per line before its error is kept.")
    ] = 3,
    group_size: Annotated[
        int, Field(ge=1, description="Documents read, sent and merged together.")
    ] = 5000,
    storage_block: Annotated[
        str | None, Field(description="S3Storage block for s3:// paths; default: AWS env.")
    ] = None,
) -> EnrichReport:
    logger = get_run_logger()
    started = time.monotonic()
    enrichments = parse_enrichments(enrichments)
    settings = _storage_settings(storage_block)
    reserved = [column for e in enrichments for column in e.columns]
    resolved = validate_source(source, id_column, text_column, reserved, settings)
    state = RunState(destination, settings).begin(str(flow_run.get_id() or ""))
    logger.info(
        "generation %d (%s) for %d rows from %s",
        state.generation,
        "resumed" if state.resumed else "new",
        resolved.num_rows,
        source,
    )
    with resolve_backend(batch_api) as backend:
        report = EnrichReport(
            source=source,
            destination=destination,
            backend=backend.label,
            mode=mode,
            generation=state.generation,
            resumed=state.resumed,
            rows_in=resolved.num_rows,
        )
        limits = BatchLimits(
            max_lines=min(shard_size or backend.api.max_lines, backend.api.max_lines),
            max_bytes=backend.api.max_bytes,
        )
        options = {
            "poll_interval_seconds": poll_interval_seconds or backend.poll_interval_seconds,
            "timeout_seconds": timeout_seconds,
            "deadline": time.monotonic() + timeout_seconds,
            "run_started": time.time(),
            "max_in_flight": max_in_flight,
            "max_line_attempts": max_line_attempts,
        }
        total_groups = max(1, math.ceil(resolved.num_rows / group_size))
        progress = create_progress_artifact(
            progress=0.0,
            key="enrich-progress",
            description=f"Groups of {group_size} documents enriched out of {total_groups}",
        )
        writer: OutputWriter | None = None
        try:
            for index, group in enumerate(iter_groups(resolved, group_size)):
                lines = prepare_group(
                    group, index, enrichments, resolved, state, mode == "incremental"
                )
                for name in {e.name for e in enrichments}:
                    report.enrichments.setdefault(name, EnrichmentCounts())
                results = state.read_group(lines.key)
                if results is None:
                    results = _enrich_group(lines, state, backend, limits, options, report)
                _carried(lines, report)
                if writer is None:
                    metadata = _provenance(backend, enrichments, state, mode)
                    schema = output_schema(group.schema, enrichments, metadata)
                    writer = OutputWriter(state, schema)
                enriched = merge_group(group, lines, results, enrichments, writer.schema)
                writer.write(enriched)
                _count(enriched, enrichments, report)
                report.groups += 1
                update_progress_artifact(progress, 100.0 * report.groups / total_groups)
            if writer is None:
                raise RuntimeError("the source yielded no rows")
            report.output_path = writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            state.finish(succeeded=False)
            raise
    state.finish(succeeded=True)
    report.seconds = round(time.monotonic() - started, 2)
    create_markdown_artifact(
        key="enrich-report", markdown=report.to_markdown(), description="Enrichment run report"
    )
    logger.info(
        "wrote %d rows to %s (%d batches submitted, %d reattached)",
        report.rows_in,
        report.output_path,
        report.batches_submitted,
        report.batches_reattached,
    )
    return report


def _carried(lines: GroupLines, report: EnrichReport) -> None:
    for name, count in lines.carried_over.items():
        report.enrichments[name].carried_over += count


def _storage_settings(block_name: str | None) -> StorageSettings | None:
    if not block_name:
        return None
    from blocks.storage import S3Storage

    return S3Storage.load(block_name).settings()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.enrich", description="Run the enrich-documents flow once."
    )
    parser.add_argument("--params", required=True, help="JSON file of flow parameters")
    args = parser.parse_args(argv)
    params = json.loads(Path(args.params).read_text())
    params["enrichments"] = parse_enrichments(params.get("enrichments"))
    report = enrich_documents(**params)
    print(report.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
