"""Storage helpers: one S3 client per settings and environment, existence checks asked
together, and files read in one request."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tasks.paths import PathOverlapError, check_paths
from tasks.storage import existing, filesystem, read_bytes, read_json
from tests.flows.fault_proxy import LoopbackProxy


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


def test_a_file_on_s3_is_read_in_one_request_there_or_not(
    s3_bucket: str, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The ledger, the lock and generation.json are read at every start: on S3 each request
    # costs tens of milliseconds.
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="state/generation.json", Body=b'{"a": 1}')
    with LoopbackProxy(moto_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        fs, root = filesystem(f"s3://{s3_bucket}/state")
        assert read_json(fs, f"{root}/generation.json") == {"a": 1}
        assert read_json(fs, f"{root}/missing.json") is None
        with pytest.raises(FileNotFoundError):
            read_bytes(fs, f"{root}/missing.json")
        assert proxy.total_requests == 3, proxy.paths
    (tmp_path / "generation.json").write_bytes(b'{"a": 1}')
    local, folder = filesystem(str(tmp_path))
    assert read_json(local, f"{folder}/generation.json") == {"a": 1}
    assert read_json(local, f"{folder}/missing.json") is None
