"""Where documents come from: each kind of source is a `Source` in a module of its own."""

from __future__ import annotations

from tasks.sources.base import READ_ERROR_COLUMN, Source, SourceError, list_objects
from tasks.sources.parquet import ParquetSource
from tasks.sources.text import TextSource
from tasks.storage import StorageSettings

# Tried in this order: a folder holding Parquet files is read as Parquet.
SOURCE_TYPES: tuple[type[Source], ...] = (ParquetSource, TextSource)


def resolve_source(
    url: str,
    id_column: str = "id",
    text_column: str = "text",
    settings: StorageSettings | None = None,
) -> Source:
    """Find the objects behind `url` and the kind of source that reads them."""
    files, root = list_objects(url, settings)
    for source_type in SOURCE_TYPES:
        paths = tuple(f for f in files if f.endswith(source_type.suffixes))
        if paths:
            return source_type(url, paths, id_column, text_column, settings, root=root)
    raise SourceError(
        f"source {url!r} is empty: it holds no Parquet files and no .txt/.md/.json objects"
    )


__all__ = [
    "READ_ERROR_COLUMN",
    "SOURCE_TYPES",
    "ParquetSource",
    "Source",
    "SourceError",
    "TextSource",
    "resolve_source",
]
