"""Part K of N of a source: every row in exactly one part, by file or by id hash."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.read import SourceError, iter_groups, part_sizes, validate_source


def _write(folder: Path, files: int, rows: int) -> str:
    folder.mkdir(parents=True)
    for f in range(files):
        ids = [f"doc-{f}-{i}" for i in range(rows)]
        pq.write_table(
            pa.table({"id": ids, "text": [f"text {i}" for i in ids]}), folder / f"{f}.parquet"
        )
    return str(folder)


@pytest.mark.parametrize(("files", "rows", "split"), [(5, 20, "file"), (1, 300, "id")])
def test_the_parts_hold_every_row_once(tmp_path: Path, files: int, rows: int, split: str) -> None:
    source = _write(tmp_path / "src", files, rows)
    whole = validate_source.fn(source)
    sizes = part_sizes(whole, 4)
    seen: list[str] = []
    for k in range(1, 5):
        part = validate_source.fn(source, part=f"{k}/4")
        assert part.split == split
        assert part.num_rows == sizes[k - 1] > 0
        ids = [i for group in iter_groups(part, 7) for i in group.column("id").to_pylist()]
        assert len(ids) == part.num_rows
        seen += ids
    assert sorted(seen) == sorted(pq.read_table(source).column("id").to_pylist())
    assert sum(sizes) == files * rows


@pytest.mark.parametrize("part", ["3", "0/4", "5/4", "a/b", "1/0"])
def test_a_malformed_part_is_refused_with_the_expected_form(tmp_path: Path, part: str) -> None:
    source = _write(tmp_path / "src", 1, 5)
    with pytest.raises(SourceError, match="part="):
        validate_source.fn(source, part=part)
