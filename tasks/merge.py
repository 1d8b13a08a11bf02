"""Join decoded results to their documents and write the enriched dataset.

Results are joined on `custom_id` (never on line order). Each group of documents becomes one
or more row groups of a single Parquet file written aside under `_state/`; `commit` then puts
it in place in one step (a rename locally, one server-side copy on S3), so a reader of
`destination` sees the previous dataset or the new one, never a half-written one.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.read import READ_ERROR_COLUMN
from tasks.shard import GroupLines
from tasks.spec import ClassifyEnrichment, Enrichment, ExtractEnrichment, SummarizeEnrichment
from tasks.state import RESULT_SCHEMA, RunState
from tasks.storage import join, move, remove

OUTPUT_FILE = "enriched.parquet"
ROW_GROUP_ROWS = 10_000

ENTITY_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("type", pa.string()),
        ("confidence", pa.float64()),
        ("start", pa.int64()),
        ("end", pa.int64()),
    ]
)
ENTITIES_TYPE = pa.list_(ENTITY_TYPE)
SCORES_TYPE = pa.map_(pa.string(), pa.float64())
NO_RESULT_ERROR = "no result was recorded for this line"


def enrichment_fields(enrichment: Enrichment) -> list[pa.Field]:
    name = enrichment.name
    if isinstance(enrichment, ExtractEnrichment):
        fields = [pa.field(name, ENTITIES_TYPE)]
    elif isinstance(enrichment, SummarizeEnrichment):
        fields = [pa.field(name, pa.string())]
    else:
        fields = [pa.field(name, pa.string()), pa.field(f"{name}_scores", SCORES_TYPE)]
    return [*fields, pa.field(f"{name}_error", pa.string())]


def output_schema(
    source_schema: pa.Schema, enrichments: list[Enrichment], metadata: dict[str, str]
) -> pa.Schema:
    fields = [f for f in source_schema if f.name != READ_ERROR_COLUMN]
    for enrichment in enrichments:
        fields.extend(enrichment_fields(enrichment))
    return pa.schema(fields, metadata=metadata)


def _values(enrichment: Enrichment, results: list[str | None]) -> list[pa.Array]:
    parsed = [json.loads(r) if r is not None else None for r in results]
    if isinstance(enrichment, ExtractEnrichment):
        entities = [
            None
            if p is None
            else [
                {
                    "text": e["text"],
                    "type": e["type"],
                    "confidence": float(e["confidence"]),
                    "start": e.get("start"),
                    "end": e.get("end"),
                }
                for e in p["entities"]
            ]
            for p in parsed
        ]
        return [pa.array(entities, ENTITIES_TYPE)]
    if isinstance(enrichment, SummarizeEnrichment):
        return [pa.array([None if p is None else p["summary"] for p in parsed], pa.string())]
    assert isinstance(enrichment, ClassifyEnrichment)
    labels = pa.array([None if p is None else p["top_label"] for p in parsed], pa.string())
    scores = pa.array(
        [None if p is None else list(p["scores"].items()) for p in parsed], SCORES_TYPE
    )
    return [labels, scores]


@task(name="merge-group", cache_policy=NO_CACHE)
def merge_group(
    group: pa.Table,
    lines: GroupLines,
    results: pa.Table,
    enrichments: list[Enrichment],
    schema: pa.Schema,
) -> pa.Table:
    """The group's rows with every enrichment's columns, each row exactly once."""
    joined = lines.lines.join(results, keys="custom_id", join_type="left outer")
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: group.column(name) for name in group.column_names if name != READ_ERROR_COLUMN
    }
    for enrichment in enrichments:
        part = joined.filter(pc.equal(joined["enrichment"], enrichment.name)).sort_by("row")
        rows = part.column("row").to_pylist()
        if rows != list(range(group.num_rows)):
            raise RuntimeError(
                f"results for {enrichment.name!r} do not cover the group's rows exactly once "
                f"({len(rows)} results for {group.num_rows} rows)"
            )
        result = part.column("result").to_pylist()
        error = part.column("error").to_pylist()
        error = [
            NO_RESULT_ERROR if r is None and e is None else e
            for r, e in zip(result, error, strict=True)
        ]
        names = [f.name for f in enrichment_fields(enrichment)]
        for name, values in zip(
            names, [*_values(enrichment, result), pa.array(error, pa.string())], strict=True
        ):
            columns[name] = values
    return pa.table(columns).select(schema.names).cast(schema)


class OutputWriter:
    """Writes the enriched dataset aside, row group by row group; `commit` puts it in place."""

    def __init__(self, state: RunState, schema: pa.Schema) -> None:
        self.state = state
        self.schema = schema
        self.staging = state.staging_path(OUTPUT_FILE)
        self.target = join(state.root, OUTPUT_FILE)
        state.fs.makedirs(state.staging_path(""), exist_ok=True)
        self._handle = state.fs.open(self.staging, "wb")
        self._writer = pq.ParquetWriter(self._handle, schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def commit(self) -> str:
        self._writer.close()
        self._handle.close()
        move(self.state.fs, self.staging, self.target)
        return self.target

    def abort(self) -> None:
        try:
            self._writer.close()
            self._handle.close()
        finally:
            remove(self.state.fs, self.staging)


def results_for(lines: GroupLines, recorded: list[pa.Table]) -> pa.Table:
    """Every custom id of the group once: the latest attempt wins, known rows fill the rest."""
    tables = [t for t in recorded if t.num_rows]
    if lines.known:
        tables.append(pa.Table.from_pylist(list(lines.known.values()), schema=RESULT_SCHEMA))
    if not tables:
        return RESULT_SCHEMA.empty_table()
    combined = pa.concat_tables(tables)
    # Keep the row with the highest attempt per custom id.
    order = combined.sort_by([("custom_id", "ascending"), ("attempts", "descending")])
    ids = order.column("custom_id").to_pylist()
    keep = [i for i, c in enumerate(ids) if i == 0 or ids[i - 1] != c]
    return order.take(pa.array(keep, pa.int64()))
