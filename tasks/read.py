"""Read documents: Parquet (file, folder or glob; local or `s3://`) or a prefix of text objects.

Everything is streamed in record batches: the source is never loaded whole. `validate_source`
makes one pass over the id column only, so bad input is refused before anything is paid for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.parts import Part, SplitBy, files_of, id_parts, in_part, parse_part, split_by
from tasks.storage import StorageSettings, filesystem, is_local

TEXT_SUFFIXES = (".txt", ".md", ".json")
# Per-row problems found while reading (e.g. an object that is not UTF-8). The merge turns
# it into each enrichment's error; it never reaches the output dataset.
READ_ERROR_COLUMN = "__read_error"
_SCAN_BATCH_ROWS = 8_192


class SourceError(ValueError):
    """The source cannot be enriched as given; the message says what to fix."""


@dataclass(frozen=True)
class Source:
    """A resolved source: which files, of which kind, and the columns to use."""

    url: str
    kind: str  # "parquet" or "text"
    paths: tuple[str, ...]
    id_column: str
    text_column: str
    settings: StorageSettings | None = field(default=None, repr=False)
    columns: tuple[str, ...] = ()
    num_rows: int = 0
    # The folder the paths are found under: local text objects get ids relative to it.
    root: str = ""
    # The schema every file is read as (Parquet only); found by `validate_source`.
    schema: pa.Schema | None = field(default=None, repr=False, compare=False)
    # Only this part of the source is read (`tasks.parts`), by file or by id hash.
    part: Part | None = None
    split: SplitBy | None = None

    @property
    def filesystem(self):
        return filesystem(self.url, self.settings)[0]


def _has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def _visible(path: str, root: str) -> bool:
    """pyarrow's discovery rule: skip any path part starting with '_' or '.'."""
    relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return not any(part.startswith(("_", ".")) for part in relative.split("/"))


def resolve_source(
    url: str,
    id_column: str = "id",
    text_column: str = "text",
    settings: StorageSettings | None = None,
    part: Part | None = None,
) -> Source:
    """Find the files behind `url` and decide whether they are Parquet or text objects; with
    `part`, keep only that part's files (or mark its rows to be picked by id)."""
    fs, path = filesystem(url, settings)
    try:
        if _has_glob(path):
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
    files = [f for f in files if _visible(f, root)]
    parquet = [f for f in files if f.endswith((".parquet", ".parq", ".pq"))]
    texts = [f for f in files if f.endswith(TEXT_SUFFIXES)]
    for kind, found in (("parquet", parquet), ("text", texts)):
        if not found:
            continue
        paths, split = tuple(found), None
        if part is not None:
            split = split_by(len(paths), part.count)
            paths = files_of(paths, part) if split == "file" else paths
        return Source(
            url, kind, paths, id_column, text_column, settings, root=root, part=part, split=split
        )
    raise SourceError(
        f"source {url!r} is empty: it holds no Parquet files and no .txt/.md/.json objects"
    )


def _object_id(source: Source, path: str) -> str:
    """An object's id: on S3 its key (without the bucket); locally its path under the folder.

    Local ids are relative so that moving or renaming the folder keeps every document's id,
    and with it what an incremental run carries over.
    """
    if source.url.startswith(("s3://", "s3a://")):
        return path.split("/", 1)[1] if "/" in path else path
    if source.root:
        return posixpath.relpath(path, source.root)
    return path


def _decode_text_object(source: Source, path: str, data: bytes) -> tuple[str | None, str | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (
            f"object {_object_id(source, path)!r} is not valid UTF-8 "
            f"(byte 0x{data[exc.start]:02x} at offset {exc.start}); re-encode it as UTF-8"
        )
    if path.endswith(".json"):
        # A JSON object with the text column is read as that field; anything else as raw text.
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return text, None
        if isinstance(parsed, dict) and isinstance(parsed.get(source.text_column), str):
            return parsed[source.text_column], None
    return text, None


def _text_batches(source: Source, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    fs = source.filesystem
    for start in range(0, len(source.paths), 256):
        chunk = source.paths[start : start + 256]
        ids = [_object_id(source, p) for p in chunk]
        if columns == [source.id_column]:
            yield pa.record_batch({source.id_column: pa.array(ids, pa.string())})
            continue
        contents = fs.cat(list(chunk))
        texts, errors = [], []
        for path in chunk:
            text, error = _decode_text_object(source, path, contents[path])
            texts.append(text)
            errors.append(error)
        yield pa.record_batch(
            {
                source.id_column: pa.array(ids, pa.string()),
                source.text_column: pa.array(texts, pa.string()),
                READ_ERROR_COLUMN: pa.array(errors, pa.string()),
            }
        )


@contextlib.contextmanager
def _parquet_file(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[pq.ParquetFile]:
    """One file of the source, its handle closed however the reader stops.

    Without pre-buffering, `iter_batches` decodes page by page, so even a file written as one
    huge row group is never held whole in memory.
    """
    if is_local(fs):
        yield pq.ParquetFile(path, pre_buffer=False)
        return
    with fs.open(path, "rb") as handle:
        yield pq.ParquetFile(handle, pre_buffer=False)


def source_schema(source: Source) -> pa.Schema:
    """The schema all Parquet files of the source are read as.

    Files may differ in column order, lack a column or hold a wider type (int32 and int64,
    string and large_string): their schemas are unified with Arrow's permissive promotion and
    every batch is cast to the result. Only each file's footer is read.
    """
    if source.schema is not None:
        return source.schema
    fs = source.filesystem
    unified: pa.Schema | None = None
    first_seen: dict[str, str] = {}
    for path in source.paths:
        try:
            with _parquet_file(fs, path) as reader:
                schema = reader.schema_arrow.remove_metadata()
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(
                f"{_object_id(source, path)!r} in source {source.url!r} is not readable "
                f"Parquet: {exc}"
            ) from None
        if unified is None:
            unified = schema
        else:
            try:
                unified = pa.unify_schemas([unified, schema], promote_options="permissive")
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                raise _type_conflict(source, unified, schema, first_seen, path) from None
        for name in schema.names:
            first_seen.setdefault(name, path)
    assert unified is not None  # resolve_source never returns a Parquet source without files
    return unified


def _type_conflict(
    source: Source,
    unified: pa.Schema,
    schema: pa.Schema,
    first_seen: dict[str, str],
    path: str,
) -> SourceError:
    for name in schema.names:
        if name not in unified.names:
            continue
        before, now = unified.field(name), schema.field(name)
        try:
            pa.unify_schemas([pa.schema([before]), pa.schema([now])], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            return SourceError(
                f"column {name!r} is {now.type} in {_object_id(source, path)!r} but "
                f"{before.type} in the files before it (first in "
                f"{_object_id(source, first_seen[name])!r}); the files of one source must agree "
                "on each column's type or differ only in width (int32 and int64, string and "
                "large_string). Rewrite the odd files with one type for the column, or point "
                "`source` at files that agree."
            )
    return SourceError(f"the files of source {source.url!r} have schemas that cannot be unified")


def iter_record_batches(
    source: Source, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the source in its stable order (files sorted by path, rows in file order)."""
    if source.split == "id":
        yield from _part_rows(source, columns)
        return
    if source.kind == "text":
        yield from _text_batches(source, columns)
        return
    schema = source_schema(source)
    names = columns or schema.names
    target = pa.schema([schema.field(n) for n in names])
    fs = source.filesystem
    for path in source.paths:
        with _parquet_file(fs, path) as reader:
            present = [n for n in names if n in reader.schema_arrow.names]
            for batch in reader.iter_batches(batch_size=_SCAN_BATCH_ROWS, columns=present):
                # Files of one source may differ in column order, types or lack a column.
                yield pa.RecordBatch.from_arrays(
                    [
                        batch.column(n).cast(field.type)
                        if n in present
                        else pa.nulls(batch.num_rows, field.type)
                        for n, field in zip(names, target, strict=True)
                    ],
                    schema=target,
                )


def _part_rows(source: Source, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """The rows of the source whose id hashes to its part."""
    assert source.part is not None
    whole = replace(source, split=None)
    wanted = (
        columns if columns is None or source.id_column in columns else [*columns, source.id_column]
    )
    for batch in iter_record_batches(whole, wanted):
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


def _schema(source: Source) -> pa.Schema:
    if source.kind == "text":
        return pa.schema([(source.id_column, pa.string()), (source.text_column, pa.string())])
    return source_schema(source)


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
    nulls = ids.null_count
    as_text = pc.cast(ids, pa.string()).to_pylist()
    hashes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
            for v in as_text
            if v is not None
        ),
        dtype=np.uint64,
    )
    return hashes, nulls


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
    source = resolve_source(url, id_column, text_column, settings, wanted)
    schema = _schema(source)
    if source.kind == "parquet":
        source = replace(source, schema=schema)
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
    return _schema(source)


def part_sizes(source: Source, count: int) -> list[int]:
    """Rows in each of `count` parts of the whole source (`tasks.parts`), in part order."""
    sizes = np.zeros(count, dtype=np.int64)
    if split_by(len(source.paths), count) == "file":
        for index, path in enumerate(source.paths):
            if source.kind == "text":
                rows = 1
            else:
                with _parquet_file(source.filesystem, path) as reader:
                    rows = reader.metadata.num_rows
            sizes[index % count] += rows
    else:
        for batch in iter_record_batches(source, [source.id_column]):
            parts = id_parts(batch.column(0), count)
            sizes += np.bincount(parts - 1, minlength=count)
    return [int(size) for size in sizes]
