"""Overlapping paths are refused before anything is paid, naming both paths and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.paths import PathOverlapError, check_paths
from tasks.state import DestinationPathError, RunState


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.parquet").write_bytes(b"PAR1")
    return folder


@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        ("data", "data/enriched", "is inside the source"),
        ("data", "data", "is inside the source"),
        ("data/docs.parquet", "data", "is inside the destination"),
        ("data/**/*.parquet", "data/enriched", "would read the destination"),
        ("data/*/*.parquet", "data/enriched", "would read the destination"),
        ("data/*.parquet", "data", "is inside the destination"),
        ("out/corpus/*.parquet", "out", "is inside the destination"),
    ],
)
def test_overlapping_source_and_destination_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, destination: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    corpus(tmp_path / "data")
    with pytest.raises(PathOverlapError, match=message) as caught:
        check_paths(source, destination)
    text = str(caught.value)
    assert source in text and str(tmp_path / destination) in text
    assert "sibling" in text or "Narrow the glob" in text


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ("data/docs.parquet", "enriched"),
        ("data", "data-enriched"),
        ("data/*.parquet", "data-enriched"),
        ("data/2026-*/docs.parquet", "data/enriched"),
        ("data/**/docs.parquet", "data/enriched"),
    ],
)
def test_sibling_folders_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, destination: str
) -> None:
    monkeypatch.chdir(tmp_path)
    corpus(tmp_path / "data")
    check_paths(source, destination)
    check_paths(source, destination, "delta")


@pytest.mark.parametrize("mark", ["enriched.parquet", "_delta_log/00000000000000000000.json"])
def test_a_destination_inside_another_destinations_dataset_is_refused(
    tmp_path: Path, mark: str
) -> None:
    corpus(tmp_path / "corpus")
    outer = tmp_path / "enriched"
    (outer / mark).parent.mkdir(parents=True, exist_ok=True)
    (outer / mark).write_text("{}")
    with pytest.raises(PathOverlapError) as caught:
        check_paths(str(tmp_path / "corpus"), str(outer / "on-demand"))
    text = str(caught.value)
    assert f"{outer}/on-demand" in text and f"another destination, '{outer}'" in text
    assert str(tmp_path / "enriched-on-demand") in text


def test_a_destination_inside_a_folder_with_working_state_is_refused(tmp_path: Path) -> None:
    """A destination whose run has not written any output yet still owns its folder."""
    RunState(str(tmp_path / "nightly")).begin("run-1")
    with pytest.raises(PathOverlapError, match="inside the dataset of another destination"):
        check_paths(str(corpus(tmp_path / "corpus")), str(tmp_path / "nightly" / "part"))
    # Siblings of it are fine.
    check_paths(str(tmp_path / "corpus"), str(tmp_path / "on-demand"))


def test_a_destination_containing_another_destination_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "enriched" / "nightly"
    inner.mkdir(parents=True)
    (inner / "enriched.parquet").write_bytes(b"PAR1")
    with pytest.raises(DestinationPathError, match="dataset of another destination") as caught:
        check_paths(str(corpus(tmp_path / "corpus")), str(tmp_path / "enriched"))
    assert str(inner) in str(caught.value)
    assert str(tmp_path / "enriched-nightly") in str(caught.value)


def test_a_bucket_root_is_refused_as_a_destination(s3_bucket: str) -> None:
    with pytest.raises(DestinationPathError, match="bucket or filesystem root") as caught:
        check_paths(f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}")
    assert f"s3://{s3_bucket}/enriched" in str(caught.value)


def test_overlap_on_s3_names_both_urls(s3_bucket: str) -> None:
    with pytest.raises(PathOverlapError) as caught:
        check_paths(f"s3://{s3_bucket}/docs/", f"s3://{s3_bucket}/docs/enriched")
    assert f"s3://{s3_bucket}/docs/enriched" in str(caught.value)
    assert f"s3://{s3_bucket}/docs/" in str(caught.value)
    check_paths(f"s3://{s3_bucket}/docs/", f"s3://{s3_bucket}/enriched", "delta")


def test_the_demo_and_the_served_deployments_write_sibling_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.definitions import load_specs
    from flows.demo import demo_job

    monkeypatch.chdir(tmp_path)
    demo = demo_job(Path("demo-output"))
    jobs = [demo] + [spec.parameters for spec in load_specs()]
    Path(demo["source"]).parent.mkdir(parents=True)
    Path(demo["source"]).write_bytes(b"PAR1")
    for job in jobs:  # each one after the others have written their output
        check_paths(job["source"], job["destination"])
        Path(job["destination"]).mkdir(parents=True, exist_ok=True)
        (Path(job["destination"]) / "enriched.parquet").write_bytes(b"PAR1")
    for job in jobs:
        check_paths(job["source"], job["destination"])
