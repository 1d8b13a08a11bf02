"""`output_format="parquet"`: one file, `destination/enriched.parquet`, replaced in one step.

Row groups are written to a file in the run's state folder (outside the dataset); `commit`
moves it into place (a rename locally, one server-side copy on S3), so a reader of
`destination` sees last night's file or tonight's, never half of one. There is no history:
each successful run replaces the file.
"""

from __future__ import annotations

import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.sinks.base import DELTA_LOG, existing_folder
from tasks.state import LEGACY_STATE_FOLDER, DestinationPathError, RunState
from tasks.storage import StorageSettings, join, move, remove

OUTPUT_FILE = "enriched.parquet"
ROW_GROUP_ROWS = 10_000


class ParquetSink:
    """Writes the enriched dataset aside, row group by row group; `commit` puts it in place."""

    name = "parquet"

    def __init__(
        self, destination: str, state: RunState, settings: StorageSettings | None = None
    ) -> None:
        self.state = state
        self.staging = state.staging_path(OUTPUT_FILE)
        self.target = join(state.root, OUTPUT_FILE)
        self.schema = pa.schema([])
        self._handle: fsspec.spec.AbstractBufferedFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def open(self, schema: pa.Schema, metadata: dict[str, str]) -> None:
        # The provenance goes in the file's key-value metadata.
        self.schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        self.state.fs.makedirs(self.state.staging_path(""), exist_ok=True)
        self._handle = self.state.fs.open(self.staging, "wb")
        self._writer = pq.ParquetWriter(self._handle, self.schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        assert self._writer is not None, "open the sink first"
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def _close(self) -> None:
        writer, handle = self._writer, self._handle
        self._writer = self._handle = None
        try:
            if writer is not None:
                writer.close()
        finally:
            if handle is not None:
                handle.close()

    def commit(self) -> str:
        self._close()
        move(self.state.fs, self.staging, self.target)
        return self.target

    def abort(self) -> None:
        try:
            self._close()
        finally:
            remove(self.state.fs, self.staging)

    @classmethod
    def check_destination(cls, destination: str, fs: fsspec.AbstractFileSystem, root: str) -> None:
        """Readers open the whole folder, so it must hold nothing but our file."""
        if not existing_folder(destination, fs, root, "the dataset"):
            return
        if fs.exists(join(root, DELTA_LOG)):
            raise DestinationPathError(
                f"destination {destination!r} is a Delta table: run with "
                "output_format='delta' to add a version to it, or give another folder for "
                "the Parquet output"
            )
        others = sorted(p for p in fs.find(root) if p.rstrip("/") != join(root, OUTPUT_FILE))
        nested = sorted(
            {
                posixpath.dirname(
                    p.split(f"/{DELTA_LOG}/")[0] if f"/{DELTA_LOG}/" in p else p
                ).removesuffix(f"/{LEGACY_STATE_FOLDER}")
                for p in others
                if p.endswith(f"/{OUTPUT_FILE}")
                or f"/{DELTA_LOG}/" in p
                or p.endswith(f"/{LEGACY_STATE_FOLDER}/generation.json")
            }
        )
        if nested:
            inner = nested[0]
            sibling = f"{root.rstrip('/')}-{posixpath.basename(inner)}"
            raise DestinationPathError(
                f"destination {destination!r} holds the dataset of another destination, "
                f"{inner!r}: readers of {destination!r} would take its rows for theirs. "
                f"Destinations are sibling folders: move it beside this one (e.g. to "
                f"{sibling!r}) or give this run another folder"
            )
        if others:
            shown = ", ".join(repr(p) for p in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            raise DestinationPathError(
                f"destination {destination!r} holds files that are not this job's output "
                f"({shown}{more}); readers of the folder would take them for rows of the "
                "dataset. Give an empty folder (or one that holds only enriched.parquet from "
                "an earlier run), or move those files out"
            )
