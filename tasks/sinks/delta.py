"""`output_format="delta"`: a Delta Lake table at `destination`, one version per successful run.

The rows stream straight into `deltalake.write_deltalake(..., mode="overwrite")` on a writer
thread, through a small queue, so memory stays bounded by a few groups whatever the number of
documents. Nothing is visible until the writer commits, after the last group: `abort` makes
the stream fail, so delta-rs writes no commit and the table keeps its version (the data files
it had written stay unreferenced; `DeltaTable(path).vacuum()` removes them). Each version holds
every current row, as the Parquet output does; earlier versions stay readable
(`DeltaTable(path, version=N)`) until vacuumed. The run's provenance is the commit's metadata
(`DeltaTable(path).history()`).

On S3 the commit is made safe by a conditional put (`AWS_CONDITIONAL_PUT=etag`), so no lock
service (DynamoDB) is needed; the run's own destination lock keeps a second run out anyway.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator

import fsspec
import pyarrow as pa

from tasks.sinks.base import DELTA_LOG, existing_folder
from tasks.sinks.parquet import OUTPUT_FILE
from tasks.state import DestinationPathError, RunState
from tasks.storage import StorageSettings, filesystem, join

# Tables waiting for the writer thread: bounds memory while the writer uploads.
_QUEUE_TABLES = 2
_END = object()


class DeltaWriteAborted(RuntimeError):
    """Raised inside the writer's stream so that delta-rs stops without committing."""


def delta_url(destination: str, settings: StorageSettings | None = None) -> str:
    """The table's location as delta-rs takes it: an absolute local path or an s3:// URL."""
    _, root = filesystem(destination, settings)
    if destination.startswith(("s3://", "s3a://")):
        return "s3://" + root
    return root


def delta_storage_options(
    settings: StorageSettings | None, url: str, environ: dict[str, str] | None = None
) -> dict[str, str]:
    """delta-rs storage options for `url` from the same settings the rest of the run uses.

    Without settings, delta-rs reads the AWS environment variables itself (keys, region,
    `AWS_ENDPOINT_URL`); this adds what it does not infer: plain HTTP for an `http://`
    endpoint (a local S3 such as moto or MinIO) and conditional put for safe commits.
    """
    if not url.startswith("s3://"):
        return {}
    env = os.environ if environ is None else environ
    options: dict[str, str] = {}
    if "AWS_CONDITIONAL_PUT" not in env:
        options["AWS_CONDITIONAL_PUT"] = "etag"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if settings is not None:
        endpoint = settings.endpoint_url or endpoint
        region = settings.region or region
        for key, secret in (
            ("AWS_ACCESS_KEY_ID", settings.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", settings.secret_access_key),
            ("AWS_SESSION_TOKEN", settings.session_token),
        ):
            if secret is not None:
                options[key] = secret.get_secret_value()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if region:
        options["AWS_REGION"] = region
    return options


class DeltaSink:
    """Streams the run's rows into one Delta commit made by `commit`."""

    name = "delta"

    def __init__(
        self,
        destination: str,
        state: RunState | None = None,
        settings: StorageSettings | None = None,
    ) -> None:
        self.url = delta_url(destination, settings)
        self._storage_options = delta_storage_options(settings, self.url)
        self.schema = pa.schema([])
        self.rows = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_TABLES)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._done = False

    def __repr__(self) -> str:  # never the storage options: they may hold keys
        return f"DeltaSink({self.url!r})"

    def open(self, schema: pa.Schema, metadata: dict[str, str]) -> None:
        from deltalake import CommitProperties, WriterProperties, write_deltalake

        self.schema = schema
        stream_schema = schema.remove_metadata()

        def batches() -> Iterator[pa.RecordBatch]:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, DeltaWriteAborted):
                    raise item
                assert isinstance(item, pa.Table)
                yield from item.cast(stream_schema).to_batches()

        def run() -> None:
            try:
                write_deltalake(
                    self.url,
                    pa.RecordBatchReader.from_batches(stream_schema, batches()),
                    mode="overwrite",
                    # Enrichments may change between nights: the new version has tonight's
                    # columns, as the Parquet output would.
                    schema_mode="overwrite",
                    storage_options=self._storage_options or None,
                    writer_properties=WriterProperties(compression="ZSTD"),
                    commit_properties=CommitProperties(custom_metadata=dict(metadata)),
                )
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, name="delta-writer", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        assert self._thread is not None, "open the sink first"
        while True:
            if not self._thread.is_alive():
                self._raise_failure()
                raise RuntimeError(f"the Delta writer for {self.url} stopped early")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise_failure(self) -> None:
        if self._error is not None and not isinstance(self._error, DeltaWriteAborted):
            raise RuntimeError(
                f"writing the Delta table {self.url} failed: {self._error}"
            ) from self._error

    def write(self, table: pa.Table) -> None:
        self._put(table)
        self.rows += table.num_rows

    def commit(self) -> str:
        self._put(_END)
        assert self._thread is not None
        self._thread.join()
        self._done = True
        self._raise_failure()
        return self.url

    def abort(self) -> None:
        if self._thread is None or self._done:
            return
        self._done = True
        if self._thread.is_alive():
            # Fail the stream: delta-rs then returns without writing a commit.
            while self._thread.is_alive():
                try:
                    self._queue.put(DeltaWriteAborted("the run failed"), timeout=0.5)
                    break
                except queue.Full:
                    # Make room: what is queued will never be committed.
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
            self._thread.join()

    @classmethod
    def check_destination(cls, destination: str, fs: fsspec.AbstractFileSystem, root: str) -> None:
        """An empty (or new) folder, or a Delta table: anything else is refused."""
        if not existing_folder(destination, fs, root, "the Delta table"):
            return
        if fs.exists(join(root, DELTA_LOG)):
            return
        entries = sorted(p.rstrip("/") for p in fs.ls(root, detail=False))
        if not entries:
            return
        if join(root, OUTPUT_FILE) in entries:
            raise DestinationPathError(
                f"destination {destination!r} holds the Parquet output of "
                "output_format='parquet' (enriched.parquet): run with output_format='parquet', "
                "or give another folder for the Delta table (or remove that file to switch)"
            )
        shown = ", ".join(repr(p) for p in entries[:3])
        raise DestinationPathError(
            f"destination {destination!r} holds files and is not a Delta table ({shown}"
            f"{' ...' if len(entries) > 3 else ''}): give an empty folder, or an existing "
            "Delta table to add a version to"
        )
