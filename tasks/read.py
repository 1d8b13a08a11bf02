"""Read documents from a source (`tasks.sources`: Parquet files, text objects), in groups.

Everything is streamed in record batches: the source is never loaded whole. `validate_source`
makes one pass over the id column only, so bad input is refused before anything is paid for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.parts import Part, files_of, id_hashes, id_parts, in_part, parse_part, split_by
from tasks.sources import READ_ERROR_COLUMN, Source, SourceError
from tasks.sources import resolve_source as resolve_whole
from tasks.storage import StorageSettings

__all__ = [
    "READ_ERROR_COLUMN",
    "Source",
    "SourceError",
    "iter_groups",
    "iter_record_batches",
    "resolve_source",
    "validate_source",
]


def resolve_source(
    url: str,
    id_column: str = "id",
    text_column: str = "text",
    settings: StorageSettings | None = None,
    part: Part | None = None,
) -> Source:
    """The source behind `url` (`tasks.sources`); with `part`, only that part of it
    (`tasks.parts`): its own files, or every file with its rows picked by id."""
    source = resolve_whole(url, id_column, text_column, settings)
    if part is None:
        return source
    split = split_by(len(source.paths), part.count)
    paths = files_of(source.paths, part) if split == "file" else source.paths
    return replace(source, paths=paths, part=part, split=split)


def iter_record_batches(
    source: Source, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the source in its stable order (e.g. files sorted by path, rows in file order)."""
    if source.split != "id":
        return source.batches(columns)
    return _part_rows(source, columns)


def _part_rows(source: Source, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """The rows of the source whose id hashes to its part."""
    assert source.part is not None
    wanted = (
        columns if columns is None or source.id_column in columns else [*columns, source.id_column]
    )
    for batch in source.batches(wanted):
        kept = batch.filter(in_part(batch.column(source.id_column), source.part))
        if columns is not None and wanted != columns:
            kept = kept.select(columns)
        if kept.num_rows:
            yield kept


def iter_groups(source: Source, group_size: int) -> Iterator[pa.Table]:
    """Consecutive tables of exactly `group_size` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in iter_record_batches(source):
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= group_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, group_size).combine_chunks()
            rest = table.slice(group_size)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending).combine_chunks()


def _check_columns(source: Source, schema: pa.Schema) -> None:
    missing = [c for c in (source.id_column, source.text_column) if c not in schema.names]
    if missing:
        raise SourceError(
            f"source {source.url!r} has no column {', '.join(map(repr, missing))}; "
            f"its columns are {schema.names}. Set id_column/text_column to the right names."
        )
    text_type = schema.field(source.text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise SourceError(
            f"text column {source.text_column!r} has type {text_type}, not string; "
            "cast it to string or choose another text_column"
        )


def _id_hashes(batch: pa.RecordBatch | pa.Table, column: str) -> tuple[np.ndarray, int]:
    ids = batch.column(column)
    return id_hashes(ids), ids.null_count


def _find_duplicate_ids(source: Source, suspects: np.ndarray, limit: int = 5) -> list[str]:
    suspect_set = set(suspects.tolist())
    seen: dict[str, int] = {}
    for batch in iter_record_batches(source, [source.id_column]):
        hashes, _ = _id_hashes(batch, source.id_column)
        values = [v for v in pc.cast(batch.column(0), pa.string()).to_pylist() if v is not None]
        for value, digest in zip(values, hashes.tolist(), strict=True):
            if digest in suspect_set:
                seen[value] = seen.get(value, 0) + 1
    return [f"{value!r} x{count}" for value, count in seen.items() if count > 1][:limit]


@task(name="validate-source", cache_policy=NO_CACHE)
def validate_source(
    url: str,
    id_column: str = "id",
    text_column: str = "text",
    reserved_columns: list[str] | None = None,
    settings: StorageSettings | None = None,
    part: str | None = None,
) -> Source:
    """Check the source before anything is submitted; returns it resolved, with its row count.

    Checks: it exists and is not empty, its Parquet files agree on column types, the id and
    text columns exist, ids are non-null and unique, and no source column collides with a
    column the enrichments will add. With `part` ('K/N'), only that part of the source.
    """
    try:
        wanted = parse_part(part)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    source = resolve_source(url, id_column, text_column, settings, wanted).checked()
    schema = source.schema()
    _check_columns(source, schema)
    clashes = sorted(set(reserved_columns or ()) & set(schema.names))
    if clashes:
        raise SourceError(
            f"source columns {clashes} would be overwritten by enrichment outputs; "
            "rename the enrichments"
        )
    parts: list[np.ndarray] = []
    nulls = 0
    for batch in iter_record_batches(source, [id_column]):
        hashes, batch_nulls = _id_hashes(batch, id_column)
        parts.append(hashes)
        nulls += batch_nulls
    num_rows = sum(len(p) for p in parts) + nulls
    if num_rows == 0:
        of = f" in part {part}" if wanted else ""
        raise SourceError(f"source {url!r} is empty{of}: it has no rows to enrich")
    if nulls:
        raise SourceError(
            f"id column {id_column!r} has {nulls} null value(s); every document needs an id"
        )
    hashes = np.sort(np.concatenate(parts))
    repeated = hashes[1:][hashes[1:] == hashes[:-1]]
    if repeated.size:
        examples = _find_duplicate_ids(source, np.unique(repeated))
        raise SourceError(
            f"id column {id_column!r} is not unique: {repeated.size} repeated value(s), e.g. "
            f"{', '.join(examples)}. Deduplicate the source or choose a unique id_column."
        )
    return replace(source, columns=tuple(schema.names), num_rows=num_rows)


def schema_of(source: Source) -> pa.Schema:
    """The columns every row of the source is read with."""
    return source.schema()


def part_sizes(source: Source, count: int) -> list[int]:
    """Rows in each of `count` parts of the whole source (`tasks.parts`), in part order."""
    sizes = np.zeros(count, dtype=np.int64)
    if split_by(len(source.paths), count) == "file":
        for index, path in enumerate(source.paths):
            one = replace(source, paths=(path,))
            rows = sum(b.num_rows for b in one.batches([source.id_column]))
            sizes[index % count] += rows
    else:
        for batch in iter_record_batches(source, [source.id_column]):
            parts = id_parts(batch.column(0), count)
            sizes += np.bincount(parts - 1, minlength=count)
    return [int(size) for size in sizes]
