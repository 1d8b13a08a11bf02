"""What every output format implements: a `Sink` that opens, writes, commits and aborts.

The flow opens one sink per run once it knows the output schema, writes the enriched groups to
it in source order, and either commits (the run succeeded: readers now see tonight's rows) or
aborts (nothing the run wrote becomes visible; last night's output stays as it was). A new
format is one module with a class like `tasks.sinks.parquet.ParquetSink`, named in
`tasks.sinks.SINKS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import fsspec
import pyarrow as pa

from tasks.state import LEGACY_STATE_FOLDER, DestinationPathError, state_root
from tasks.storage import join

if TYPE_CHECKING:
    from tasks.state import RunState
    from tasks.storage import StorageSettings


class Sink(Protocol):
    """One run's output. `schema` is what `write` takes (set by `open`)."""

    schema: pa.Schema

    def open(self, schema: pa.Schema, metadata: dict[str, str]) -> None:
        """Start the output; `metadata` is the run's provenance (string keys and values)."""

    def write(self, table: pa.Table) -> None:
        """Append rows (a table of `schema`); memory stays bounded whatever the total."""

    def commit(self) -> str:
        """Make everything written visible in one step; returns where it is."""

    def abort(self) -> None:
        """Drop what was written; the previous output stays as it was. Safe to call twice."""


class SinkType(Protocol):
    """A sink class: built for one run, and able to judge a destination before the run pays."""

    name: str

    def __call__(
        self, destination: str, state: RunState, settings: StorageSettings | None
    ) -> Sink: ...

    def check_destination(
        self, destination: str, fs: fsspec.AbstractFileSystem, root: str
    ) -> None: ...


# The transaction log folder that makes a folder a Delta table.
DELTA_LOG = "_delta_log"


def existing_folder(destination: str, fs: fsspec.AbstractFileSystem, root: str, holds: str) -> bool:
    """Whether the destination folder exists already (then worth a closer look): refuses a
    file where `holds` should go, and the working state of an earlier version."""
    if not fs.isdir(root):
        if fs.exists(root):
            raise DestinationPathError(
                f"destination {destination!r} is a file: give a folder for {holds}"
            )
        return False
    refuse_legacy_state(destination, fs, root)
    return True


def refuse_legacy_state(destination: str, fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Earlier versions kept the working state inside the destination, where every reader
    but pyarrow takes it for data; say where it belongs now."""
    legacy = join(root, LEGACY_STATE_FOLDER)
    if fs.exists(join(legacy, "generation.json")):
        target = state_root(root)
        on_s3 = "://" in destination and not destination.startswith("file://")
        prefix = destination.split("://", 1)[0] + "://" if on_s3 else ""
        move = (
            f"aws s3 mv --recursive {prefix}{legacy} {prefix}{target}"
            if on_s3
            else f"mkdir -p {target.rsplit('/', 1)[0]} && mv {legacy} {target}"
        )
        raise DestinationPathError(
            f"destination {destination!r} holds the working state of an earlier version in "
            f"{prefix}{legacy}, where Polars, DuckDB and Spark read it as data. It now lives "
            f"beside the destination, in {prefix}{target}: move it there ({move}) to keep "
            "resuming and incremental runs, or delete it to start afresh"
        )
