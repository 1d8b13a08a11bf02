"""The generated sample corpus: shape, determinism and size control.

Its speed is reported by bench/pipeline.py ("corpus written in ... s"), not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.sample_corpus import DEMO_ENRICHMENTS, KINDS, generate_documents, write_corpus
from tasks.spec import parse_enrichments


def test_columns_and_unique_ids() -> None:
    table = generate_documents(500)
    assert table.column_names == ["id", "text", "kind", "created_at"]
    assert table.schema.field("created_at").type.equals(pa.timestamp("ms", tz="UTC"))
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == 500
    assert ids[0] == "doc-000001"
    assert table.column("text").null_count == 0
    assert pc.min(pc.utf8_length(table.column("text"))).as_py() > 100


def test_every_kind_appears() -> None:
    table = generate_documents(300)
    assert set(table.column("kind").to_pylist()) == set(KINDS)
    texts = " ".join(table.column("text").to_pylist())
    for marker in ("Subject:", "Agreement", "million", "@", "%", "GmbH"):
        assert marker in texts


def test_same_seed_same_corpus_other_seed_differs() -> None:
    assert generate_documents(200, seed=3).equals(generate_documents(200, seed=3))
    assert not generate_documents(200, seed=3).equals(generate_documents(200, seed=4))
    # A prefix of a larger corpus is the smaller corpus (batching does not change rows).
    assert generate_documents(25_000, seed=5).slice(0, 300).equals(generate_documents(300, seed=5))


def test_target_chars_is_honoured_without_repeating_sentences() -> None:
    table = generate_documents(200, target_chars=2000)
    lengths = pc.utf8_length(table.column("text"))
    assert pc.min(lengths).as_py() >= 2000
    assert pc.max(lengths).as_py() <= 2400
    for text in table.column("text").to_pylist()[:50]:
        sentences = [s for s in text.replace("\n", " ").split(". ") if len(s) > 20]
        assert len(sentences) == len(set(sentences))


def test_write_corpus_creates_parent_folders(tmp_path: Path) -> None:
    path = write_corpus(str(tmp_path / "a" / "b" / "docs.parquet"), 1234, seed=9)
    written = pq.read_table(path)
    assert written.num_rows == 1234
    assert written.equals(generate_documents(1234, seed=9))


def test_demo_enrichments_are_valid() -> None:
    enrichments = parse_enrichments(DEMO_ENRICHMENTS)
    assert [e.model for e in enrichments] == ["extract", "summarize", "classify"]
