"""Join decoded results to their documents: the enriched rows and their schema.

Results are joined on `custom_id` (never on line order). The rows go to the run's output sink
(`tasks.sinks`: Parquet or Delta), which makes them visible in one step when the run succeeds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.read import READ_ERROR_COLUMN
from tasks.shard import GroupLines
from tasks.sinks.parquet import OUTPUT_FILE, ROW_GROUP_ROWS
from tasks.spec import ClassifyEnrichment, Enrichment, ExtractEnrichment, SummarizeEnrichment
from tasks.state import RESULT_SCHEMA

__all__ = ["OUTPUT_FILE", "ROW_GROUP_ROWS", "merge_group", "output_schema", "results_for"]

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


def _result_schema(enrichment: Enrichment) -> pa.Schema:
    """The fields of a domain result that reach the output (others are ignored)."""
    if isinstance(enrichment, ExtractEnrichment):
        return pa.schema([("entities", ENTITIES_TYPE)])
    if isinstance(enrichment, SummarizeEnrichment):
        return pa.schema([("summary", pa.string())])
    assert isinstance(enrichment, ClassifyEnrichment)
    scores = pa.struct([(label.name, pa.float64()) for label in enrichment.labels])
    return pa.schema([("top_label", pa.string()), ("scores", scores)])


def _parse(results: pa.Array | pa.ChunkedArray, schema: pa.Schema) -> pa.Table:
    """Parse the JSON results with pyarrow, never as Python objects; one row per input, null
    where there is no result."""
    valid = pc.is_valid(results)
    present = pc.filter(results, valid)
    if len(present):
        # The present values, one per line, as one buffer for the JSON reader.
        lines = pc.binary_join_element_wise(present, pa.scalar("\n"), "").combine_chunks()
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
        start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
        longest = pc.max(pc.binary_length(lines)).as_py()
        parsed = pa_json.read_json(
            pa.BufferReader(lines.buffers()[2].slice(start, end - start)),
            # Small blocks bound the parser's working memory; a block must hold a whole line.
            read_options=pa_json.ReadOptions(
                block_size=max(1 << 20, 2 * longest), use_threads=False
            ),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    else:
        parsed = schema.empty_table()
    flags = valid.to_numpy(zero_copy_only=False)
    positions = np.cumsum(flags) - 1
    return parsed.take(pa.array(positions, pa.int64(), mask=~flags))


def _scores_map(scores: pa.ChunkedArray, labels: list[str]) -> pa.Array:
    """struct<label: double, ...> -> map<string, double>, keeping null rows null."""
    struct = scores.combine_chunks()
    rows, width = len(struct), len(labels)
    items = np.empty(rows * width, dtype=np.float64)
    for column, _ in enumerate(labels):
        items[column::width] = struct.field(column).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    mapped = pa.MapArray.from_arrays(
        offsets, pa.array(labels * rows, pa.string()), pa.array(items), type=SCORES_TYPE
    )
    if struct.null_count:
        mapped = pc.if_else(pc.is_valid(struct), mapped, pa.nulls(rows, SCORES_TYPE))
    return mapped


def _values(enrichment: Enrichment, results: pa.ChunkedArray) -> list[pa.Array]:
    parsed = _parse(results, _result_schema(enrichment))
    if isinstance(enrichment, ExtractEnrichment):
        return [parsed.column("entities")]
    if isinstance(enrichment, SummarizeEnrichment):
        return [parsed.column("summary")]
    assert isinstance(enrichment, ClassifyEnrichment)
    labels = [label.name for label in enrichment.labels]
    return [parsed.column("top_label"), _scores_map(parsed.column("scores"), labels)]


@task(name="merge-group", cache_policy=NO_CACHE)
def merge_group(
    group: pa.Table,
    lines: GroupLines,
    results: pa.Table,
    enrichments: list[Enrichment],
    schema: pa.Schema,
) -> pa.Table:
    """The group's rows with every enrichment's columns, each row exactly once."""
    # Match on custom_id (never on line order); a line without a result gets nulls.
    matched = results.take(pc.index_in(lines.lines["custom_id"], value_set=results["custom_id"]))
    joined = lines.lines.append_column("result", matched["result"]).append_column(
        "error", matched["error"]
    )
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: group.column(name) for name in group.column_names if name != READ_ERROR_COLUMN
    }
    for enrichment in enrichments:
        part = joined.filter(pc.equal(joined["enrichment"], enrichment.name))
        rows = part.column("row").to_pylist()
        if rows != list(range(group.num_rows)):
            raise RuntimeError(
                f"results for {enrichment.name!r} do not cover the group's rows exactly once "
                f"({len(rows)} results for {group.num_rows} rows)"
            )
        result = part.column("result")
        missing = pc.and_(pc.is_null(result), pc.is_null(part.column("error")))
        error = pc.if_else(missing, pa.scalar(NO_RESULT_ERROR), part.column("error"))
        names = [f.name for f in enrichment_fields(enrichment)]
        for name, values in zip(names, [*_values(enrichment, result), error], strict=True):
            columns[name] = values
    return pa.table(columns).select(schema.names).cast(schema)


def results_for(lines: GroupLines, recorded: list[pa.Table]) -> pa.Table:
    """Every custom id of the group once: known rows first, then each attempt in order, the
    latest attempt winning."""
    tables = []
    if lines.known:
        tables.append(pa.Table.from_pylist(list(lines.known.values()), schema=RESULT_SCHEMA))
    tables.extend(t for t in recorded if t.num_rows)
    if not tables:
        return RESULT_SCHEMA.empty_table()
    combined = pa.concat_tables(tables)
    latest = {custom_id: i for i, custom_id in enumerate(combined["custom_id"].to_pylist())}
    return combined.take(pa.array(sorted(latest.values()), pa.int64()))
