"""Sources: each kind is a `Source` with a schema and record batches; the rest of a run only
uses those."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.read import iter_groups
from tasks.sources import SOURCE_TYPES, ParquetSource, Source, TextSource, resolve_source


@dataclass(frozen=True)
class TableSource(Source):
    """A source of another kind, as a new module would add it: rows from memory."""

    kind = "table"

    def schema(self) -> pa.Schema:
        return TABLE.schema

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        yield from TABLE.select(columns or TABLE.column_names).to_batches(max_chunksize=3)


TABLE = pa.table({"id": [str(i) for i in range(10)], "text": [f"doc {i}" for i in range(10)]})


def test_a_source_is_its_schema_and_batches() -> None:
    source = TableSource("memory://docs", (), "id", "text")
    groups = list(iter_groups(source, 4))
    assert [g.num_rows for g in groups] == [4, 4, 2]
    assert pa.concat_tables(groups).equals(TABLE)


def test_the_kind_is_found_from_the_objects(tmp_path) -> None:
    assert (ParquetSource, TextSource) == SOURCE_TYPES
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("alpha")
    assert isinstance(resolve_source(str(tmp_path / "notes")), TextSource)
    first = pa.table({"id": pa.array([1, 2], pa.int32()), "text": ["a", "b"]})
    pq.write_table(first, tmp_path / "1.parquet")
    pq.write_table(
        pa.table({"text": ["c"], "id": pa.array([3], pa.int64()), "x": [1.0]}),
        tmp_path / "2.parquet",
    )
    source = resolve_source(str(tmp_path / "*.parquet")).checked()
    assert isinstance(source, ParquetSource)
    # Read through pyarrow.dataset as the unified schema, files in path order.
    table = pa.Table.from_batches(list(source.batches()), schema=source.schema())
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("x").to_pylist() == [None, None, 1.0]
