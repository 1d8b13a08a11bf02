"""Parquet files as documents: one file, a folder or a glob, local or `s3://`, read through
`pyarrow.dataset`.

Files may differ in column order, lack a column (read as null) or hold a wider type (int32 and
int64, string and large_string): their schemas are unified with Arrow's permissive promotion
from the footers alone, and the dataset reads every file as the result. A real conflict (int64
beside string) is refused naming both files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.sources.base import Source, SourceError, object_id
from tasks.storage import is_local

_SCAN_BATCH_ROWS = 8_192
# Without pre-buffering and through a small buffered stream a file is decoded page by page,
# so even one written as a single huge row group is never held whole in memory.
_FORMAT = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        pre_buffer=False, use_buffered_stream=True, buffer_size=1 << 20
    )
)


@dataclass(frozen=True)
class ParquetSource(Source):
    kind = "parquet"
    suffixes = (".parquet", ".parq", ".pq")

    # The schema every file is read as; found by `checked`.
    unified: pa.Schema | None = field(default=None, repr=False, compare=False)

    def schema(self) -> pa.Schema:
        if self.unified is not None:
            return self.unified
        fs = self.filesystem
        unified: pa.Schema | None = None
        first_seen: dict[str, str] = {}
        for path in self.paths:
            try:
                with fs.open(path, "rb") as handle:
                    schema = pq.read_schema(handle).remove_metadata()
            except (pa.ArrowInvalid, OSError) as exc:
                raise SourceError(
                    f"{object_id(self, path)!r} in source {self.url!r} is not readable "
                    f"Parquet: {exc}"
                ) from None
            if unified is None:
                unified = schema
            else:
                try:
                    unified = pa.unify_schemas([unified, schema], promote_options="permissive")
                except (pa.ArrowTypeError, pa.ArrowInvalid):
                    raise self._type_conflict(unified, schema, first_seen, path) from None
            for name in schema.names:
                first_seen.setdefault(name, path)
        assert unified is not None  # a Parquet source is only resolved with files
        return unified

    def checked(self) -> ParquetSource:
        return replace(self, unified=self.schema())

    def _type_conflict(
        self, unified: pa.Schema, schema: pa.Schema, first_seen: dict[str, str], path: str
    ) -> SourceError:
        for name in schema.names:
            if name not in unified.names:
                continue
            before, now = unified.field(name), schema.field(name)
            try:
                pa.unify_schemas(
                    [pa.schema([before]), pa.schema([now])], promote_options="permissive"
                )
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                return SourceError(
                    f"column {name!r} is {now.type} in {object_id(self, path)!r} but "
                    f"{before.type} in the files before it (first in "
                    f"{object_id(self, first_seen[name])!r}); the files of one source must "
                    "agree on each column's type or differ only in width (int32 and int64, "
                    "string and large_string). Rewrite the odd files with one type for the "
                    "column, or point `source` at files that agree."
                )
        return SourceError(f"the files of source {self.url!r} have schemas that cannot be unified")

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Files in path order, rows in file order, every batch of the unified schema."""
        fs = self.filesystem
        dataset = ds.dataset(
            list(self.paths),
            schema=self.schema(),
            format=_FORMAT,
            filesystem=None if is_local(fs) else fs,
        )
        scanner = dataset.scanner(
            columns=columns,
            batch_size=_SCAN_BATCH_ROWS,
            use_threads=False,
            # Arrow's defaults (16 batches, 4 files) read ahead as fast as the disk allows:
            # a flow that merges slower than it reads held most of a large source in memory.
            # One batch ahead still overlaps reading with the work; the source is never what
            # a night waits for (the provider's window is).
            batch_readahead=1,
            fragment_readahead=1,
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch
