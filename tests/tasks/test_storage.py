"""Storage helpers: one S3 client per settings and environment, and existence checks asked
together."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tasks.paths import PathOverlapError, check_paths
from tasks.storage import existing, filesystem


def test_existing_answers_for_files_folders_and_missing_paths_on_s3_and_locally(
    s3_bucket: str, tmp_path: Path
) -> None:
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="data/enriched.parquet", Body=b"x")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="data/_delta_log/0.json", Body=b"{}")
    fs, root = filesystem(f"s3://{s3_bucket}/data")
    names = ["enriched.parquet", "_delta_log", "missing.json", "missing"]
    assert existing(fs, [f"{root}/{name}" for name in names]) == [True, True, False, False]
    (tmp_path / "_delta_log").mkdir()
    (tmp_path / "enriched.parquet").write_bytes(b"x")
    local, folder = filesystem(str(tmp_path))
    assert existing(local, [f"{folder}/{name}" for name in names]) == [True, True, False, False]


def test_one_s3_filesystem_is_shared_until_the_aws_environment_changes(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = filesystem("s3://some-bucket/a")
    again, _ = filesystem("s3://other-bucket/b")
    assert again is first  # a new one would build a new client, slower than a request
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.replace("127.0.0.1", "localhost"))
    moved, _ = filesystem("s3://some-bucket/a")
    assert moved is not first


def test_a_destination_two_folders_inside_another_dataset_on_s3_is_refused(
    s3_bucket: str,
) -> None:
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="nightly/enriched.parquet", Body=b"x")
    with pytest.raises(PathOverlapError) as caught:
        check_paths(f"s3://{s3_bucket}/docs/", f"s3://{s3_bucket}/nightly/extra/enriched")
    assert f"another destination, 's3://{s3_bucket}/nightly'" in str(caught.value)
    check_paths(f"s3://{s3_bucket}/docs/", f"s3://{s3_bucket}/other/extra/enriched")
