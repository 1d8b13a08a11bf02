"""Sources: Parquet files, folders and globs, text objects; streamed in stable groups."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.read import SourceError, iter_groups, resolve_source, validate_source


def write(path, start: int, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"d{i:03d}" for i in range(start, start + n)]
    pq.write_table(pa.table({"id": ids, "text": [f"t{i}" for i in ids]}), path)


def test_folder_glob_and_file_sources_stream_in_stable_groups(tmp_path) -> None:
    write(tmp_path / "src" / "b.parquet", 10, 7)
    write(tmp_path / "src" / "a.parquet", 0, 10)
    write(tmp_path / "src" / "_ignored" / "c.parquet", 100, 3)
    folder = resolve_source(str(tmp_path / "src"))
    assert folder.kind == "parquet" and len(folder.paths) == 2
    groups = list(iter_groups(folder, 4))
    assert [g.num_rows for g in groups] == [4, 4, 4, 4, 1]
    ids = [i for g in groups for i in g.column("id").to_pylist()]
    assert ids == [f"d{i:03d}" for i in range(17)]
    assert len(resolve_source(str(tmp_path / "src" / "*.parquet")).paths) == 2
    assert resolve_source(str(tmp_path / "src" / "a.parquet")).paths[0].endswith("a.parquet")


def test_validation_counts_rows_and_reads_ids_only(tmp_path) -> None:
    write(tmp_path / "src" / "a.parquet", 0, 25)
    source = validate_source.fn(str(tmp_path / "src"))
    assert source.num_rows == 25 and source.columns == ("id", "text")


def test_text_objects_in_a_local_folder(tmp_path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "one.txt").write_text("first")
    (tmp_path / "notes" / "two.md").write_bytes(b"\xff\xfe bad")
    source = validate_source.fn(str(tmp_path / "notes"))
    assert source.kind == "text" and source.num_rows == 2
    (group,) = iter_groups(source, 10)
    rows = group.to_pylist()
    assert rows[0]["text"] == "first" and rows[0]["__read_error"] is None
    assert rows[1]["text"] is None and "not valid UTF-8" in rows[1]["__read_error"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: (p / "x.csv").write_text("a,b"), "is empty"),
        (
            lambda p: pq.write_table(pa.table({"id": [1], "text": [3]}), p / "n.parquet"),
            "not string",
        ),
        (
            lambda p: pq.write_table(
                pa.table({"id": ["a"], "text": ["x"], "summary": ["s"]}), p / "c.parquet"
            ),
            "would be overwritten",
        ),
    ],
)
def test_bad_sources_say_what_to_fix(tmp_path, make, message: str) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    make(folder)
    target = str(folder if message != "does not exist" else tmp_path / "missing")
    with pytest.raises(SourceError) as caught:
        validate_source.fn(target, reserved_columns=["summary", "summary_error"])
    assert message in str(caught.value)


def test_files_with_wider_or_extra_columns_are_unified_not_dropped(tmp_path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b"],
                "text": ["one", "two"],
                "score": pa.array([1, 2], pa.int32()),
            }
        ),
        folder / "a.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "lang": ["de"],
                "text": pa.array(["drei"], pa.large_string()),
                "score": pa.array([2**40], pa.int64()),
                "id": ["c"],
            }
        ),
        folder / "b.parquet",
    )
    source = validate_source.fn(str(folder))
    assert source.num_rows == 3
    assert set(source.columns) == {"id", "text", "score", "lang"}
    (group,) = iter_groups(source, 10)
    assert group.schema.field("score").type == pa.int64()
    assert group.schema.field("text").type == pa.large_string()
    rows = {row["id"]: row for row in group.to_pylist()}
    assert rows["c"] == {"id": "c", "text": "drei", "score": 2**40, "lang": "de"}
    assert rows["a"]["score"] == 1 and rows["a"]["lang"] is None


def test_files_that_disagree_on_a_type_are_refused_before_anything_is_sent(tmp_path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "n": [1]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": ["y"], "n": ["one"]}), folder / "b.parquet")
    with pytest.raises(SourceError) as caught:
        validate_source.fn(str(folder))
    message = str(caught.value)
    assert "column 'n' is string in" in message and "b.parquet" in message
    assert "int64 in the files before it" in message and "a.parquet" in message
    assert "Rewrite the odd files" in message


def test_a_file_that_is_not_parquet_is_named(tmp_path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    write(folder / "a.parquet", 0, 3)
    (folder / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError) as caught:
        validate_source.fn(str(folder))
    assert "b.parquet" in str(caught.value) and "not readable Parquet" in str(caught.value)


def _ids(url: str) -> list[str]:
    (group,) = iter_groups(validate_source.fn(url), 10)
    return group.column("id").to_pylist()


def test_text_objects_in_a_local_folder_keep_their_ids_when_the_folder_moves(tmp_path) -> None:
    notes = tmp_path / "night-1" / "notes"
    (notes / "2026" / "11").mkdir(parents=True)
    (notes / "a.txt").write_text("first")
    (notes / "2026" / "11" / "b.md").write_text("second")
    before = _ids(str(notes))
    assert before == ["2026/11/b.md", "a.txt"]

    moved = tmp_path / "archive" / "renamed"
    moved.parent.mkdir()
    notes.rename(moved)
    assert _ids(str(moved)) == before
    # A glob names objects relative to the folder it starts in, a single object by its name.
    assert _ids(str(moved / "*.txt")) == ["a.txt"]
    assert _ids(str(moved / "2026" / "*" / "b.m?")) == ["11/b.md"]
    assert _ids(str(moved / "a.txt")) == ["a.txt"]


def test_reading_a_large_file_holds_a_few_batches_not_the_file(tmp_path) -> None:
    # Arrow's scanner reads ahead as fast as the disk allows unless told otherwise; a flow
    # that merges slower than it reads would then hold most of a large source in memory.
    rows, chars = 360_000, 500
    ids = [f"d{i:07d}" for i in range(rows)]
    table = pa.table({"id": ids, "text": [(i * 55)[:chars] for i in ids]})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=10_000)
    file_mb = table.nbytes / 2**20
    del table, ids
    source = resolve_source(str(tmp_path / "big.parquet"))
    baseline = pa.total_allocated_bytes()
    held = []
    for group in iter_groups(source, 2_000):
        time.sleep(0.005)  # a slow consumer, as the flow is
        held.append((pa.total_allocated_bytes() - baseline) / 2**20)
        del group
    assert len(held) == rows // 2_000
    assert file_mb > 150
    assert max(held) < file_mb / 4, f"held up to {max(held):.0f} MB of a {file_mb:.0f} MB file"
