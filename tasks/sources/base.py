"""What every source implements: a unified schema and a stream of record batches.

A source is resolved from the `source` parameter once (`tasks.sources.resolve_source`), checked
by `tasks.read.validate_source`, then read in its stable order as often as a run needs (the id
column alone to check ids, every column to enrich). A new kind of source is one module with a
`Source` subclass, named in `tasks.sources.SOURCE_TYPES`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import fsspec
import pyarrow as pa

from tasks.parts import Part, SplitBy
from tasks.storage import StorageSettings, filesystem

# Per-row problems found while reading (e.g. an object that is not UTF-8). The merge turns
# it into each enrichment's error; it never reaches the output dataset.
READ_ERROR_COLUMN = "__read_error"


class SourceError(ValueError):
    """The source cannot be enriched as given; the message says what to fix."""


@dataclass(frozen=True)
class Source:
    """A resolved source: which objects, and the columns to use. Subclasses read them."""

    kind: ClassVar[str]
    # Suffixes of the objects this kind reads, when a folder or glob is given.
    suffixes: ClassVar[tuple[str, ...]] = ()

    url: str
    paths: tuple[str, ...]
    id_column: str
    text_column: str
    settings: StorageSettings | None = field(default=None, repr=False)
    columns: tuple[str, ...] = ()
    num_rows: int = 0
    # The folder the paths are found under: local text objects get ids relative to it.
    root: str = ""
    # Only this part of the source is read (`tasks.parts`): `paths` are the part's own files
    # (split by file), or every file with rows picked by id (`tasks.read`).
    part: Part | None = None
    split: SplitBy | None = None

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem:
        return filesystem(self.url, self.settings)[0]

    def schema(self) -> pa.Schema:
        """The schema every batch has (a unified one, if the objects differ)."""
        raise NotImplementedError

    def checked(self) -> Source:
        """The source with what its first full look found (e.g. its schema), kept for the
        reads that follow; raises SourceError naming what is wrong."""
        return self

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches in the source's stable order, of `columns` (all by default)."""
        raise NotImplementedError


def has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def visible(path: str, root: str) -> bool:
    """pyarrow's discovery rule: skip any path part starting with '_' or '.'."""
    relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return not any(part.startswith(("_", ".")) for part in relative.split("/"))


def list_objects(url: str, settings: StorageSettings | None) -> tuple[list[str], str]:
    """The visible objects behind a file, folder or glob, sorted, and the folder they are
    under."""
    fs, path = filesystem(url, settings)
    try:
        if has_glob(path):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))
            fixed = path[: min(path.find(c) for c in "*?[" if c in path)]
            root = fixed.rsplit("/", 1)[0]
        elif fs.isdir(path):
            files = sorted(fs.find(path))
            root = path
        elif fs.isfile(path):
            files, root = [path], posixpath.dirname(path)
        else:
            raise SourceError(
                f"source {url!r} does not exist: give a Parquet file, folder or glob, "
                "or an s3://bucket/prefix/ of .txt/.md/.json objects"
            )
    except PermissionError as exc:
        raise SourceError(
            f"source {url!r} cannot be listed: {exc}; check the credentials"
        ) from None
    return [f for f in files if visible(f, root)], root


def object_id(source: Source, path: str) -> str:
    """An object's id: on S3 its key (without the bucket); locally its path under the folder.

    Local ids are relative so that moving or renaming the folder keeps every document's id,
    and with it what an incremental run carries over.
    """
    if source.url.startswith(("s3://", "s3a://")):
        return path.split("/", 1)[1] if "/" in path else path
    if source.root:
        return posixpath.relpath(path, source.root)
    return path
