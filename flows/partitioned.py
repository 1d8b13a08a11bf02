"""The `enrich-partitioned` flow: one night's source in N parts over a work pool, one output.

The parent splits the source into `parts` (`tasks.parts`: by file when the source has that many
files, else by a hash of the id), runs each part as a child flow run of an `enrich-documents`
deployment (`run_deployment`), so the workers of its work pool share the night, and waits for
them. Each child writes its part as Parquet to a folder of the parent's working state,
`PARENT/_batch-enrich/NAME/parts/part-00003/`, and keeps its own ledger beside it, so it resumes
by itself. When every part is done, the parent streams the parts into the destination through
the run's sink in one commit: one new Delta version (or one Parquet file moved into place), so
readers see the whole night or the previous one, never a mix.

Rerunning the parent resumes the night. Child runs are created with an idempotency key made of
the job, the parent's generation, the part and an attempt number: a rerun finds the runs it
started before, keeps the finished ones (their part output must name the run), waits for the
running ones, and starts a new attempt only for a part whose run failed, crashed, or died (its
part's lock names a process that is gone, or its heartbeat stopped); the new attempt reattaches
to the batches recorded in the part's ledger, so nothing is paid twice.
"""

import inspect
import json
import time
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as current_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed
from pydantic import BaseModel, Field

import tasks.lock
from flows.backend import backend_label
from flows.enrich import enrich_documents
from flows.run import provenance, validate_job
from flows.runners import check_task_runner
from tasks.lock import DestinationLock, gone_reason, read_lock
from tasks.merge import output_schema
from tasks.parts import MAX_PARTS, Part, id_hashes, split_by
from tasks.read import part_sizes, schema_of
from tasks.sinks import make_sink
from tasks.sinks.base import DELTA_LOG
from tasks.sinks.delta import delta_storage_options, delta_url
from tasks.sinks.parquet import OUTPUT_FILE
from tasks.spec import described, spec_hash
from tasks.state import RunState, digest, state_folder, state_root
from tasks.storage import StorageSettings, filesystem, join, read_json, remove

DEFAULT_DEPLOYMENT = "enrich-documents/on-demand"
PARTS_FOLDER = "parts"
# Between two looks at the child runs.
CHECK_SECONDS = 2.0
# New child runs one parent run may start for a part after its first one failed or died.
NEW_ATTEMPTS_PER_PART = 2
# A child run that holds no lock and left no trace for this long is taken for dead (its
# machine went away before it took its part's lock). Generous: validating a large part takes
# a while, and a wrong guess only costs a second run that waits at the part's lock.
SILENT_CHILD_SECONDS = 600.0
# A child that recorded its part as succeeded normally reports Completed within a second or
# two; past this, it is taken to have died while reporting and its part counts as done.
REPORTING_GRACE_SECONDS = 30.0
# Provenance key naming the night (job and generation) an output was published for.
NIGHT_KEY = "batch_enrich.night"

# The parent takes the main flow's parameters, with the same types, checks and descriptions.
_HINTS = typing.get_type_hints(enrich_documents.fn, include_extras=True)
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(enrich_documents.fn).parameters.items()
}
SourceParam = _HINTS["source"]
DestinationParam = _HINTS["destination"]
EnrichmentsParam = _HINTS["enrichments"]
IdColumnParam = _HINTS["id_column"]
TextColumnParam = _HINTS["text_column"]
BatchApiParam = _HINTS["batch_api"]
ShardSizeParam = _HINTS["shard_size"]
ParallelSubmissionsParam = _HINTS["parallel_submissions"]
PollIntervalSecondsParam = _HINTS["poll_interval_seconds"]
TimeoutSecondsParam = _HINTS["timeout_seconds"]
ModeParam = _HINTS["mode"]
MaxErrorFractionParam = _HINTS["max_error_fraction"]
MaxLineAttemptsParam = _HINTS["max_line_attempts"]
GroupSizeParam = _HINTS["group_size"]
ParallelGroupsParam = _HINTS["parallel_groups"]
TaskRunnerParam = _HINTS["task_runner"]
DaskAddressParam = _HINTS["dask_address"]
StorageBlockParam = _HINTS["storage_block"]
OutputFormatParam = _HINTS["output_format"]


class PartitionError(ValueError):
    """The partitioned run cannot start as given; the message says what to fix."""


class PartsFailedError(RuntimeError):
    """Some parts did not finish; the finished ones are kept for the rerun."""


class PartReport(BaseModel):
    part: str
    rows: int
    flow_run_id: str | None = None
    attempts: int = 0  # child runs this part has had in this generation
    state: str | None = None


class PartitionedReport(BaseModel):
    source: str
    destination: str
    output_path: str | None = None
    output_format: str
    deployment: str
    split: str  # "file" or "id"
    generation: int
    resumed: bool
    rows_in: int
    rows_out: int = 0
    parts: list[PartReport] = Field(default_factory=list)
    seconds: float = 0.0

    def to_markdown(self) -> str:
        lines = [
            "# Partitioned enrichment run",
            "",
            f"- **source**: `{self.source}` in {len(self.parts)} parts (by {self.split})",
            f"- **output**: `{self.output_path or self.destination}` ({self.output_format})",
            f"- **rows**: {self.rows_in} in, {self.rows_out} out",
            f"- **generation**: {self.generation} ({'resumed' if self.resumed else 'new'})",
            "",
            "| part | rows | child run | runs | state |",
            "|---|---|---|---|---|",
        ]
        for item in self.parts:
            lines.append(
                f"| {item.part} | {item.rows} | {item.flow_run_id or ''} | {item.attempts} "
                f"| {item.state or ''} |"
            )
        return "\n".join(lines) + "\n"


@dataclass
class PartRun:
    part: Part
    rows: int
    destination: str
    attempt: int = 0
    new_runs: int = 0
    run: FlowRun | None = None
    done: bool = False
    failure: str | None = None

    @property
    def output(self) -> str:
        return join(self.destination, OUTPUT_FILE)


@flow(name="enrich-partitioned", log_prints=False)
def enrich_partitioned(
    source: SourceParam,
    destination: DestinationParam,
    enrichments: EnrichmentsParam,
    parts: Annotated[
        int,
        described(
            ge=1,
            le=MAX_PARTS,
            description="Child runs the source is split into: by file when it has this many "
            "files, else by a hash of the id.",
        ),
    ] = 4,
    deployment: Annotated[
        str,
        described(
            "The enrich-documents deployment ('flow/deployment') each part runs on; its work "
            "pool's workers share the parts."
        ),
    ] = DEFAULT_DEPLOYMENT,
    id_column: IdColumnParam = _DEFAULTS["id_column"],
    text_column: TextColumnParam = _DEFAULTS["text_column"],
    batch_api: BatchApiParam = _DEFAULTS["batch_api"],
    shard_size: ShardSizeParam = _DEFAULTS["shard_size"],
    max_in_flight: Annotated[
        int,
        described(
            ge=1,
            description="Batches open at the provider at once in each part's run; the night "
            "has up to parts x this many open.",
        ),
    ] = _DEFAULTS["max_in_flight"],
    parallel_submissions: ParallelSubmissionsParam = _DEFAULTS["parallel_submissions"],
    poll_interval_seconds: PollIntervalSecondsParam = _DEFAULTS["poll_interval_seconds"],
    timeout_seconds: TimeoutSecondsParam = _DEFAULTS["timeout_seconds"],
    mode: ModeParam = _DEFAULTS["mode"],
    max_error_fraction: MaxErrorFractionParam = _DEFAULTS["max_error_fraction"],
    max_line_attempts: MaxLineAttemptsParam = _DEFAULTS["max_line_attempts"],
    group_size: GroupSizeParam = _DEFAULTS["group_size"],
    parallel_groups: ParallelGroupsParam = _DEFAULTS["parallel_groups"],
    task_runner: TaskRunnerParam = _DEFAULTS["task_runner"],
    dask_address: DaskAddressParam = _DEFAULTS["dask_address"],
    storage_block: StorageBlockParam = _DEFAULTS["storage_block"],
    output_format: OutputFormatParam = _DEFAULTS["output_format"],
) -> PartitionedReport:
    logger = get_run_logger()
    started = time.monotonic()
    if not PREFECT_API_URL.value():
        raise PartitionError(
            "enrich-partitioned runs its parts on a work pool's workers, which a temporary "
            "Prefect server has none of: set PREFECT_API_URL to the server the workers use"
        )
    # The children check these too, but a mistake should stop the night before any part runs.
    check_task_runner(task_runner, dask_address, PREFECT_API_URL.value())
    job = validate_job(
        source, destination, enrichments, id_column, text_column, batch_api, shard_size, mode,
        group_size, storage_block, output_format,
    )  # fmt: skip
    parsed, settings, resolved = job.enrichments, job.settings, job.source
    deployment_id = _deployment_id(deployment)
    sizes = part_sizes(resolved, parts)
    split = split_by(len(resolved.paths), parts)
    parts_root = join(state_folder(destination, settings), PARTS_FOLDER)
    run_id = str(current_run.get_id() or "")
    with DestinationLock(destination, settings, run_id, logger=logger) as lock:
        state = RunState(destination, settings).begin(run_id)
        key = "enrich-partitioned/" + digest(
            deployment, source, destination, output_format, id_column, text_column, mode,
            spec_hash(parsed), str(parts), str(state.generation), size=12,
        )  # fmt: skip
        report = PartitionedReport(
            source=source,
            destination=destination,
            output_format=output_format,
            deployment=deployment,
            split=split,
            generation=state.generation,
            resumed=state.resumed,
            rows_in=resolved.num_rows,
        )
        runs = [
            PartRun(Part(i + 1, parts), rows, join(parts_root, Part(i + 1, parts).name))
            for i, rows in enumerate(sizes)
            if rows  # a part with no rows has nothing to run (few ids, many parts)
        ]
        logger.info(
            "generation %d (%s): %d rows from %s in %d parts by %s, on %s",
            state.generation,
            "resumed" if state.resumed else "new",
            resolved.num_rows,
            source,
            len(runs),
            split,
            deployment,
        )
        common: dict[str, Any] = {
            "source": source,
            # Unset fields left out: the deployment's schema has no null for them.
            "enrichments": [e.model_dump(mode="json", exclude_none=True) for e in parsed],
            "id_column": id_column,
            "text_column": text_column,
            "batch_api": batch_api,
            "shard_size": shard_size,
            "max_in_flight": max_in_flight,
            "parallel_submissions": parallel_submissions,
            "poll_interval_seconds": poll_interval_seconds,
            "timeout_seconds": timeout_seconds,
            "mode": mode,
            "max_error_fraction": max_error_fraction,
            "max_line_attempts": max_line_attempts,
            "group_size": group_size,
            "parallel_groups": parallel_groups,
            "task_runner": task_runner,
            "dask_address": dask_address,
            "storage_block": storage_block,
        }
        try:
            _run_parts(runs, deployment, deployment_id, key, common, settings, lock, logger)
            report.parts = [_part_report(item) for item in runs]
            metadata = {
                **provenance(backend_label(batch_api, job.api), parsed, state, mode),
                "batch_enrich.parts": json.dumps(
                    {str(r.part): str(r.run.id) for r in runs if r.run}
                ),
                NIGHT_KEY: key,
            }
            lock.ensure_held()
            if _published_night(output_format, destination, settings) == key:
                # An earlier run of this night committed and stopped before it could record
                # that: publishing again would add a second version of the same night.
                logger.warning("this night is already published in %s", destination)
                report.output_path, report.rows_out = destination, resolved.num_rows
            else:
                schema = output_schema(schema_of(resolved), parsed, metadata)
                report.output_path, report.rows_out = _publish(
                    runs, resolved.num_rows, id_column, schema, metadata, output_format,
                    destination, state, settings,
                )  # fmt: skip
        except BaseException:
            report.parts = [_part_report(item) for item in runs]
            state.finish(succeeded=False)
            raise
        finally:
            create_markdown_artifact(
                key="enrich-partitioned-report",
                markdown=report.to_markdown(),
                description="Partitioned enrichment run",
            )
        state.finish(succeeded=True)
        # The parts' outputs are copied into the destination; their working state stays for
        # the next night (carry-over in incremental mode).
        for item in runs:
            remove(state.fs, filesystem(item.output, settings)[1])
    report.seconds = round(time.monotonic() - started, 2)
    logger.info("published %d rows from %d parts to %s", report.rows_out, len(runs), destination)
    return report


def _deployment_id(name: str) -> Any:
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name).id
        except ObjectNotFound:
            raise PartitionError(
                f"deployment {name!r} does not exist on {PREFECT_API_URL.value()}: create it "
                "(`prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml`) "
                "or name an existing enrich-documents deployment as 'flow/deployment'"
            ) from None
        except ValueError as exc:
            raise PartitionError(
                f"deployment={name!r} is not of the form 'flow/deployment': {exc}"
            ) from None


def _run_parts(
    runs: list[PartRun],
    deployment: str,
    deployment_id: Any,
    key: str,
    common: dict[str, Any],
    settings: StorageSettings | None,
    lock: DestinationLock,
    logger: Any,
) -> None:
    """Start (or find) a child run per part and wait until every part is done or given up."""
    with get_client(sync_client=True) as client:

        def start(item: PartRun) -> None:
            while True:
                idempotency_key = f"{key}/{item.part.name}/attempt-{item.attempt}"
                found = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        idempotency_key=FlowRunFilterIdempotencyKey(any_=[idempotency_key])
                    ),
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    limit=1,
                )
                if found:
                    run = found[0]
                    if (
                        run.state is not None
                        and run.state.is_final()
                        and not run.state.is_completed()
                    ):
                        item.attempt += 1  # an earlier run of this part that failed: next
                        continue
                    item.run = run
                    return
                if item.new_runs > NEW_ATTEMPTS_PER_PART:
                    item.failure = f"{item.new_runs} runs of part {item.part} failed in this run"
                    return
                item.new_runs += 1
                item.run = run_deployment(
                    deployment,
                    parameters={
                        **_as_form_values(common),
                        "destination": item.destination,
                        "output_format": "parquet",
                        "part": str(item.part),
                    },
                    idempotency_key=idempotency_key,
                    flow_run_name=f"{item.part.name}-of-{item.part.count}-attempt-{item.attempt}",
                    tags=["batch-enrich", "enrich-partitioned"],
                    timeout=0,
                )
                logger.info(
                    "part %s: started child run %s (attempt %d)",
                    item.part,
                    item.run.id,
                    item.attempt,
                )
                return

        for item in runs:
            start(item)
        while True:
            lock.ensure_held()
            waiting = [item for item in runs if not item.done and item.failure is None]
            if not waiting:
                break
            for item in waiting:
                assert item.run is not None
                run = item.run = client.read_flow_run(item.run.id)
                state = run.state
                if state is None:
                    continue
                if state.is_completed():
                    if _output_run_id(item, settings) == str(run.id):
                        item.done = True
                        continue
                    reason = "it completed but its part output is missing or from another run"
                elif state.is_cancelled():
                    item.failure = "it was cancelled; rerun this flow to run the part again"
                    continue
                elif state.is_final():
                    reason = f"it ended {state.name}: {state.message or ''}".rstrip(": ")
                elif state.is_scheduled():
                    continue  # waiting for a worker of the pool
                elif _finished_unreported(item, run, settings):
                    # Its part is written and recorded as succeeded: a run that died while
                    # reporting has nothing left to do, and must not keep the night waiting.
                    item.done = True
                    continue
                else:
                    reason = _dead_reason(item, run, settings)
                    if reason is None:
                        continue
                    client.set_flow_run_state(
                        run.id,
                        Crashed(message=f"taken for dead by enrich-partitioned: {reason}"),
                        force=True,
                    )
                logger.warning("part %s: child run %s failed, %s", item.part, run.id, reason)
                item.attempt += 1
                start(item)
            time.sleep(CHECK_SECONDS)
    failed = [item for item in runs if not item.done]
    if failed:
        raise PartsFailedError(
            f"{len(failed)} of {len(runs)} parts did not finish: "
            + "; ".join(
                f"part {item.part} (last child run {item.run.id if item.run else 'none'}: "
                f"{item.failure})"
                for item in failed
            )
            + ". Nothing was published. Look at those child runs' logs, fix the cause, and "
            "rerun this flow with the same parameters: finished parts are kept and the others "
            "resume from their own ledgers, so no batch is paid twice"
        )


def _as_form_values(parameters: dict[str, Any]) -> dict[str, Any]:
    """Optional parameters left empty, as the deployment's schema takes them: the flow reads
    a blank text or a 0 as "none" (`tasks.spec.OptionalText`, `OptionalCount`)."""
    from prefect.utilities.callables import parameter_schema

    properties = parameter_schema(enrich_documents).model_dump_for_openapi()["properties"]
    empty = {"string": "", "integer": 0, "number": 0}
    return {
        name: empty.get(properties[name].get("type"), "") if value is None else value
        for name, value in parameters.items()
    }


def _output_run_id(item: PartRun, settings: StorageSettings | None) -> str | None:
    """The child run that wrote the part's output, if it is there."""
    fs, path = filesystem(item.output, settings)
    try:
        metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    value = metadata.get(b"batch_enrich.flow_run_id")
    return value.decode() if value else None


def _finished_unreported(item: PartRun, run: FlowRun, settings: StorageSettings | None) -> bool:
    """Whether the run wrote its part's output and recorded its generation as succeeded (the
    last things it does before releasing its lock and reporting Completed) long enough ago
    that it should have reported by now."""
    if _output_run_id(item, settings) != str(run.id):
        return False
    fs, root = filesystem(item.destination, settings)
    generation = read_json(fs, join(state_root(root), "generation.json")) or {}
    recorded_at = float(generation.get("updated_at") or 0.0)
    return (
        generation.get("status") == "succeeded"
        and time.time() - recorded_at > REPORTING_GRACE_SECONDS
    )


def _dead_reason(item: PartRun, run: FlowRun, settings: StorageSettings | None) -> str | None:
    """Why a child run that Prefect still shows as running is dead, or None if it may live."""
    now = time.time()
    holder = read_lock(item.destination, settings)
    if holder is not None and holder.flow_run_id == str(run.id):
        return gone_reason(holder, now, tasks.lock.STALE_AFTER_SECONDS)
    if _output_run_id(item, settings) == str(run.id):
        return None  # its output is written: it is finishing
    fs, root = filesystem(item.destination, settings)
    generation = read_json(fs, join(state_root(root), "generation.json")) or {}
    since = max(
        run.state.timestamp.timestamp() if run.state else 0.0,
        float(generation.get("updated_at") or 0.0),
    )
    if now - since > SILENT_CHILD_SECONDS:
        return f"no lock and no sign of progress for {now - since:.0f} s"
    return None


def _part_report(item: PartRun) -> PartReport:
    return PartReport(
        part=str(item.part),
        rows=item.rows,
        flow_run_id=str(item.run.id) if item.run else None,
        attempts=item.attempt + 1 if item.run else 0,
        state=item.run.state.name if item.run and item.run.state else None,
    )


def _published_night(
    output_format: str, destination: str, settings: StorageSettings | None
) -> str | None:
    """The night the destination's current output was published for, if by this flow."""
    from deltalake import DeltaTable

    fs, root = filesystem(destination, settings)
    try:
        if output_format == "delta":
            if not fs.exists(join(root, DELTA_LOG)):
                return None
            url = delta_url(destination, settings)
            options = delta_storage_options(settings, url) or None
            (latest,) = DeltaTable(url, storage_options=options).history(1)
            return latest.get(NIGHT_KEY)
        metadata = pq.read_schema(join(root, OUTPUT_FILE), filesystem=fs).metadata or {}
    except FileNotFoundError:
        return None
    value = metadata.get(NIGHT_KEY.encode())
    return value.decode() if value else None


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """A part's rows in the night's schema (parts split by file may lack a column, or hold a
    narrower type, as their files did)."""
    names = batch.schema.names
    return pa.Table.from_arrays(
        [
            batch.column(f.name).cast(f.type)
            if f.name in names
            else pa.nulls(batch.num_rows, f.type)
            for f in schema
        ],
        schema=schema,
    )


def _publish(
    runs: list[PartRun],
    rows_in: int,
    id_column: str,
    schema: pa.Schema,
    metadata: dict[str, str],
    output_format: str,
    destination: str,
    state: RunState,
    settings: StorageSettings | None,
) -> tuple[str, int]:
    """Every part's rows into the destination, committed once; refused before the commit if
    the parts do not hold each source row exactly once (the source changed during the run)."""
    sink = make_sink(output_format, destination, state, settings)
    sink.open(schema, metadata)
    rows, hashes = 0, []
    try:
        for item in runs:
            fs, path = filesystem(item.output, settings)
            with fs.open(path, "rb") as handle:
                reader = pq.ParquetFile(handle)
                for batch in reader.iter_batches():
                    table = _conform(batch, sink.schema)
                    hashes.append(id_hashes(table.column(id_column)))
                    sink.write(table)
                    rows += table.num_rows
        ids = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
        repeated = int((ids[1:] == ids[:-1]).sum())
        if rows != rows_in or repeated:
            raise PartsFailedError(
                f"the parts hold {rows} rows ({repeated} repeated ids) but the source had "
                f"{rows_in} when the run started: it changed during the run. Nothing was "
                "published; rerun on a source that stays put until the run ends"
            )
        return sink.commit(), rows
    except BaseException:
        sink.abort()
        raise
