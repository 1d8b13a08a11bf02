"""`python -m flows.enrich`: run the enrich-documents flow once from a shell.

The options are made from the flow's own parameters (names, types, choices, descriptions), so
the command line offers exactly what a deployment takes. The job is checked before Prefect
starts: a mistake in a parameter, the enrichments or the source is reported in one message,
without a traceback and without waiting for a temporary Prefect server.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from batchapi.errors import TerminalApiError
from flows.backend import BackendError
from flows.estimate import BudgetExceededError
from flows.report import ErrorBudgetExceededError
from flows.runners import TaskRunnerError, check_task_runner
from tasks.lock import DestinationBusyError
from tasks.paths import check_paths
from tasks.read import SourceError, validate_source
from tasks.spec import EnrichmentSpecError, parse_enrichments
from tasks.state import DestinationPathError

PROG = "python -m flows.enrich"
EXIT_USER_ERROR = 2
# Without PREFECT_API_URL the run starts a temporary Prefect server; cold, on a busy 2-core
# machine, it can need more than Prefect's default 20 s. Values set by the user win.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Its telemetry heartbeat writes to the SQLite database the run is using and logs a
    # "database is locked" traceback when they collide; it sends nothing useful offline.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
JOB_EXAMPLE = """\
  {
    "source": "s3://my-bucket/tickets/2026-11-25/*.parquet",
    "destination": "s3://my-bucket/enriched/tickets",
    "enrichments": [
      {"name": "people", "model": "extract", "entities": {"person": "a person's name"}},
      {"name": "summary", "model": "summarize", "instructions": "One sentence.",
       "max_tokens": 120},
      {"name": "topic", "model": "classify",
       "labels": [{"name": "billing", "rubric": "Is it about a payment?"}]}
    ],
    "mode": "incremental"
  }"""


class JobError(ValueError):
    """The job file or an option cannot be run; the message says what to fix."""


# Problems the user can fix (a parameter, the source, a key, a busy destination): reported in
# one message and exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    JobError,
    BudgetExceededError,
    ErrorBudgetExceededError,
    EnrichmentSpecError,
    SourceError,
    DestinationPathError,
    BackendError,
    DestinationBusyError,
    TerminalApiError,
    TaskRunnerError,
)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # During a run Prefect turns SIGTERM into a Crashed state, then re-delivers it to the
    # handler that was there before. Under the default handler the process dies at once and
    # atexit never stops the temporary Prefect server, which is left running; exiting through
    # SystemExit unwinds normally (the destination lock is released, the server stopped).
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------- the options


class Parameter(typing.NamedTuple):
    name: str
    annotation: Any  # the type without its Annotated metadata
    adapter: TypeAdapter[Any]  # validates the value as the flow would
    required: bool
    default: Any
    description: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def flow_parameters(function: Callable[..., Any]) -> list[Parameter]:
    """The flow's parameters with their types, defaults and `Field` descriptions."""
    hints = typing.get_type_hints(function, include_extras=True)
    parameters = []
    for name, param in inspect.signature(function).parameters.items():
        hint = hints.get(name, Any)
        description = ""
        annotation = hint
        if typing.get_origin(hint) is typing.Annotated:
            annotation, *extras = typing.get_args(hint)
            for extra in extras:
                if isinstance(extra, FieldInfo) and extra.description:
                    description = extra.description
        required = param.default is inspect.Parameter.empty
        parameters.append(
            Parameter(
                name=name,
                annotation=annotation,
                adapter=TypeAdapter(hint),
                required=required,
                default=None if required else param.default,
                description=description,
            )
        )
    return parameters


def _non_none(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return [annotation]


def _is_bool(annotation: Any) -> bool:
    return _non_none(annotation) == [bool]


def _choices(annotation: Any) -> list[str] | None:
    (inner, *rest) = _non_none(annotation)
    if not rest and typing.get_origin(inner) is typing.Literal:
        return [str(value) for value in typing.get_args(inner)]
    return None


def _is_structured(annotation: Any) -> bool:
    """Lists, dicts and models are given as JSON on the command line."""
    (inner, *_) = _non_none(annotation)
    origin = typing.get_origin(inner) or inner
    return origin in (list, dict, tuple, set) or (
        isinstance(origin, type) and hasattr(origin, "model_fields")
    )


def _help(parameter: Parameter) -> str:
    text = parameter.description or parameter.name.replace("_", " ")
    if parameter.name == "enrichments":
        text += " As JSON, or @FILE to read it from a file."
    elif _is_structured(parameter.annotation):
        text += " As JSON."
    if parameter.required:
        return f"{text} Required (here or in the job file)."
    if parameter.default is None:
        return f"{text} (default: none)"
    return f"{text} (default: {parameter.default!r})"


def _metavar(parameter: Parameter) -> str | None:
    if _is_structured(parameter.annotation):
        return "JSON"
    if _choices(parameter.annotation):
        return None  # argparse shows the choices
    kinds = set(_non_none(parameter.annotation))
    if kinds == {int}:
        return "N"
    if kinds == {float}:
        return "SECONDS" if parameter.name.endswith("_seconds") else "X"
    if parameter.name.startswith("max_") and parameter.name.endswith("_per_run"):
        return "N" if "lines" in parameter.name else "X"
    return parameter.name.rsplit("_", 1)[-1].upper()


def build_parser(parameters: Sequence[Parameter]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the enrich-documents flow once: read the source, send its documents to the\n"
            "Batch API, and write the enriched Parquet dataset to the destination."
        ),
        epilog=f"""\
The job file (--params) is a JSON object of the flow's parameters, the same JSON a
deployment takes; options given here override its values. Only source, destination and
enrichments are required. Example:

{JOB_EXAMPLE}

Each enrichment has a name (its output column) and a model with that model's fields:
  extract:   entities {{label: description}}, instruction
  summarize: instructions, max_tokens
  classify:  labels [{{name, rubric}}], system_prompt

Examples:
  {PROG} --params job.json
  {PROG} --params job.json --mode incremental --destination out/enriched
  {PROG} --source docs.parquet --destination out --enrichments @enrichments.json

The job is checked before Prefect starts. Without PREFECT_API_URL the run starts a
temporary Prefect server for itself (20-30 s); point PREFECT_API_URL at a running server
to skip that and watch the run in its UI.

Exit status: 0 done (the run's report is printed as JSON); 2 a problem to fix in the job,
the source, the key or the destination, printed as one message; 1 an unexpected error,
with its traceback.""",
    )
    parser.add_argument(
        "--params",
        metavar="JOB.json",
        type=Path,
        help="JSON file of flow parameters (see below)",
    )
    flow_options = parser.add_argument_group("flow parameters (override the job file)")
    for parameter in parameters:
        if _is_bool(parameter.annotation):
            flow_options.add_argument(
                parameter.option,
                dest=parameter.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_help(parameter),
            )
            continue
        metavar = _metavar(parameter)
        flow_options.add_argument(
            parameter.option,
            dest=parameter.name,
            metavar=metavar,
            choices=_choices(parameter.annotation),
            default=None,
            help=_help(parameter),
        )
    return parser


# ---------------------------------------------------------------------------- the job


def _read_job_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobError(f"cannot read the job file {str(path)!r}: {exc.strerror}") from None
    try:
        job = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobError(
            f"the job file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    if not isinstance(job, dict):
        raise JobError(
            f"the job file {str(path)!r} must hold a JSON object of flow parameters, "
            f'e.g. {{"source": ..., "destination": ..., "enrichments": [...]}}'
        )
    return job


def _option_value(parameter: Parameter, raw: Any) -> Any:
    """A command-line string as the value the flow takes (JSON for structured values)."""
    if not isinstance(raw, str) or not _is_structured(parameter.annotation):
        return raw
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise JobError(f"{parameter.option}: cannot read {raw[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobError(f"{parameter.option} is not valid JSON: {exc.msg}") from None


def _describe_errors(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(problems)


def resolve_job(args: argparse.Namespace, parameters: Sequence[Parameter]) -> dict[str, Any]:
    """The flow's keyword arguments: the job file, then the options, each value validated."""
    known = {parameter.name: parameter for parameter in parameters}
    job: dict[str, Any] = _read_job_file(args.params) if args.params else {}
    unknown = sorted(set(job) - set(known))
    if unknown:
        raise JobError(
            f"the job file {str(args.params)!r} has unknown parameter(s) {unknown}; the flow "
            f"takes {sorted(known)}"
        )
    for parameter in parameters:
        raw = getattr(args, parameter.name)
        if raw is not None:
            job[parameter.name] = _option_value(parameter, raw)
    missing = [p for p in parameters if p.required and p.name not in job]
    if missing:
        names = ", ".join(f"{p.option} (or {p.name!r} in the job file)" for p in missing)
        raise JobError(f"missing {names}; see `{PROG} --help`")
    for name, value in job.items():
        parameter = known[name]
        if name == "enrichments":
            job[name] = parse_enrichments(value)
            continue
        try:
            job[name] = parameter.adapter.validate_python(value)
        except ValidationError as exc:
            raise JobError(
                f"{parameter.option} / {name!r}: {_describe_errors(exc)} (got {value!r})"
            ) from None
    return job


def check_runner(job: dict[str, Any]) -> None:
    try:
        check_task_runner(
            job.get("task_runner", "thread"),
            job.get("dask_address"),
            os.environ.get("PREFECT_API_URL"),
        )
    except TaskRunnerError as exc:
        raise JobError(str(exc)) from None


def check_source(job: dict[str, Any]) -> None:
    """The flow's own source checks, run before Prefect starts so a mistake costs seconds."""
    if job.get("storage_block"):
        return  # its credentials are a Prefect block: the flow checks the source itself
    check_paths(job["source"], job["destination"], job.get("output_format", "parquet"))
    reserved = [column for enrichment in job["enrichments"] for column in enrichment.columns]
    validate_source.fn(
        job["source"],
        job.get("id_column", "id"),
        job.get("text_column", "text"),
        reserved,
        part=job.get("part"),
    )


# ---------------------------------------------------------------------------- running


def _with_subclasses(classes: Sequence[type[BaseException]]) -> list[type[BaseException]]:
    found = list(classes)
    for cls in classes:
        found.extend(_with_subclasses(cls.__subclasses__()))
    return found


class _OneMessageForUserErrors(logging.Filter):
    """Keep a user error out of the console log lines of the run (the failed task, the failed
    flow, each with a traceback): the command line prints it once. The Prefect UI keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self._names = sorted({cls.__name__ for cls in _with_subclasses(USER_ERRORS)})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            return False
        if record.levelno < logging.INFO or not record.name.startswith("prefect"):
            return True
        message = record.getMessage()
        failed = "exception" in message or "Failed" in message
        return not (failed and any(name in message for name in self._names))


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]


def run_flow(flow: Callable[..., Any], job: dict[str, Any]) -> Any:
    quiet = _OneMessageForUserErrors()
    handlers = _console_handlers()
    for handler in handlers:
        handler.addFilter(quiet)
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    # Prefect read its settings when it was imported; the user's environment still wins,
    # as `main` only fills in what is unset.
    updates = {
        setting: os.environ[setting.name]
        for setting in (
            PREFECT_SERVER_ANALYTICS_ENABLED,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        )
        if setting.name in os.environ
    }
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        with temporary_settings(updates=updates):
            return flow(**job)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for handler in handlers:
            handler.removeFilter(quiet)


def main(argv: Sequence[str] | None = None) -> int:
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from flows.enrich import enrich_documents

    parameters = flow_parameters(enrich_documents.fn)
    args = build_parser(parameters).parse_args(argv)
    try:
        job = resolve_job(args, parameters)
        check_runner(job)
        check_source(job)
        report = run_flow(enrich_documents, job)
    except USER_ERRORS as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(report.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
