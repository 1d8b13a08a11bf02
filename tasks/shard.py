"""Turn a group of documents into request lines, then into shards (one batch each).

A `custom_id` is content-addressed: the enrichment name plus a digest of (document id,
enrichment spec, text). The same document, spec and text always give the same id, so a rerun
finds the batches and results it already paid for; a changed text or spec gives a new id.
Shard ids are digests of their custom ids and attempt number, so a resumed run rebuilds the
very same shards and reattaches to their batches instead of submitting them again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchapi.models import BatchLimits, LineTemplate
from tasks.read import READ_ERROR_COLUMN
from tasks.spec import Enrichment
from tasks.state import digest, digest_hasher, digest_part

# Errors that are the document's, not the API's: recorded without sending anything.
EMPTY_TEXT_ERROR = "text is empty or null; nothing was sent (fill the text column to enrich it)"
SKIPPED_CODE = "skipped"
TOO_LARGE_CODE = "too_large"
# Errors that are the document's, not the API's: nothing was sent for them.
DOCUMENT_ERROR_CODES = frozenset({SKIPPED_CODE, TOO_LARGE_CODE})


def custom_id_for(doc_id: str, enrichment: Enrichment, text: str) -> str:
    """At most 64 characters: up to 24 of the enrichment name, a dash, 32 hex digits."""
    return f"{enrichment.name[:24]}-{digest(doc_id, enrichment.spec_hash(), text)}"


class _DocumentIds:
    """`custom_id_for` for every enrichment of a document, each text encoded once (the
    digest's parts are hashed in order, so the document id's part is shared)."""

    def __init__(self, enrichments: list[Enrichment]) -> None:
        self._enrichments = [(f"{e.name[:24]}-", digest_part(e.spec_hash())) for e in enrichments]

    def of(self, doc_id: str, text: str) -> list[str]:
        start = digest_hasher(doc_id)
        text_part = digest_part(text)
        ids = []
        for prefix, spec in self._enrichments:
            hasher = start.copy()
            hasher.update(spec)
            hasher.update(text_part)
            ids.append(prefix + hasher.hexdigest())
        return ids


@dataclass
class Shard:
    shard_id: str
    group: int
    attempt: int
    custom_ids: list[str]
    nbytes: int


@dataclass
class GroupLines:
    """Every (document, enrichment) pair of a group, and what is known about each already."""

    index: int
    key: str
    lines: pa.Table  # custom_id, row, enrichment: one row per (document, enrichment)
    requests: dict[str, bytes] = field(repr=False)  # custom_id -> the request line, encoded once
    known: dict[str, dict[str, Any]] = field(repr=False)  # custom_id -> result row
    carried_over: Counter[str] = field(default_factory=Counter)  # enrichment -> lines

    def enrichment_of(self, custom_id: str) -> str:
        if not hasattr(self, "_enrichment_of"):
            ids = self.lines.column("custom_id").to_pylist()
            names = self.lines.column("enrichment").to_pylist()
            self._enrichment_of = dict(zip(ids, names, strict=True))
        return self._enrichment_of[custom_id]

    @property
    def size(self) -> int:
        return self.lines.num_rows


def build_group_lines(
    group: pa.Table,
    index: int,
    enrichments: list[Enrichment],
    id_column: str,
    text_column: str,
) -> GroupLines:
    """One request line per (document, enrichment); empty text and read errors are not sent."""
    ids = group.column(id_column).cast(pa.string()).to_pylist()
    texts = group.column(text_column).to_pylist()
    read_errors = (
        group.column(READ_ERROR_COLUMN).to_pylist()
        if READ_ERROR_COLUMN in group.column_names
        else [None] * len(ids)
    )
    templates = [(e, LineTemplate(e.spec.body, e.params())) for e in enrichments]
    document_ids = _DocumentIds(enrichments)
    custom_ids: list[str] = []
    rows: list[int] = []
    names: list[str] = []
    requests: dict[str, bytes] = {}
    known: dict[str, dict[str, Any]] = {}
    for row, (doc_id, text, read_error) in enumerate(zip(ids, texts, read_errors, strict=True)):
        # The text is escaped and encoded once per document, not once per enrichment.
        encoded = LineTemplate.encode_text(text) if text else b""
        for (enrichment, template), custom_id in zip(
            templates, document_ids.of(doc_id, text or ""), strict=True
        ):
            custom_ids.append(custom_id)
            rows.append(row)
            names.append(enrichment.name)
            error = read_error or (EMPTY_TEXT_ERROR if not (text and text.strip()) else None)
            if error:
                known[custom_id] = {
                    "custom_id": custom_id,
                    "result": None,
                    "error": error,
                    "error_code": SKIPPED_CODE,
                    "attempts": 0,
                }
                continue
            requests[custom_id] = template.line(custom_id, encoded)
    lines = pa.table(
        {
            "custom_id": pa.array(custom_ids, pa.string()),
            "row": pa.array(rows, pa.int32()),
            "enrichment": pa.array(names, pa.string()),
        }
    )
    return GroupLines(index, digest(*custom_ids), lines, requests, known)


def split_into_shards(
    custom_ids: list[str],
    requests: dict[str, bytes],
    group: int,
    attempt: int,
    limits: BatchLimits,
) -> list[Shard]:
    """Consecutive shards within the line and byte limits of one batch."""
    shards: list[Shard] = []
    current: list[str] = []
    size = 0

    def close() -> None:
        if current:
            shard_id = f"g{group:05d}-a{attempt}-{digest(str(attempt), *current, size=10)}"
            shards.append(Shard(shard_id, group, attempt, list(current), size))

    for custom_id in custom_ids:
        line_bytes = len(requests[custom_id]) + 1
        if current and (len(current) >= limits.max_lines or size + line_bytes > limits.max_bytes):
            close()
            current, size = [], 0
        current.append(custom_id)
        size += line_bytes
    close()
    return shards


def set_aside_oversized(lines: GroupLines, pending: list[str], limits: BatchLimits) -> list[str]:
    """Lines that cannot fit in any batch get an error instead of failing the whole run."""
    kept: list[str] = []
    for custom_id in pending:
        size = len(lines.requests[custom_id]) + 1
        if size > limits.max_bytes:
            lines.known[custom_id] = {
                "custom_id": custom_id,
                "result": None,
                "error": f"request line is {size} bytes, over the {limits.max_bytes}-byte batch "
                "limit; nothing was sent (shorten the text or raise max_bytes_per_batch)",
                "error_code": TOO_LARGE_CODE,
                "attempts": 0,
            }
        else:
            kept.append(custom_id)
    return kept


def shard_payload(lines: GroupLines, shard: Shard) -> bytes:
    """The JSONL body of a shard's batch, from lines encoded once when the group was built."""
    return b"".join(lines.requests[c] + b"\n" for c in shard.custom_ids)
