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
from tasks.spec import Enrichment
from tasks.state import RESULT_SCHEMA

__all__ = ["OUTPUT_FILE", "ROW_GROUP_ROWS", "merge_group", "output_schema", "results_for"]

NO_RESULT_ERROR = "no result was recorded for this line"


def output_schema(
    source_schema: pa.Schema, enrichments: list[Enrichment], metadata: dict[str, str]
) -> pa.Schema:
    fields = [f for f in source_schema if f.name != READ_ERROR_COLUMN]
    for enrichment in enrichments:
        fields.extend(enrichment.arrow_fields())
    return pa.schema(fields, metadata=metadata)


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


def _values(enrichment: Enrichment, results: pa.ChunkedArray) -> list[pa.Array]:
    """The enrichment's columns (`name_error` aside) from its stored results, as JSON."""
    spec = enrichment.spec
    return spec.columns(_parse(results, spec.stored_schema(enrichment)), enrichment)


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
        names = enrichment.columns
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
