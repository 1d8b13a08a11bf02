"""Where bytes live: local paths or `s3://` URLs, through fsspec, with atomic writes.

S3 settings come from a `StorageSettings` (built by the `S3Storage` block) or, when
none is given, from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`) that boto3 and s3fs read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import posixpath
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.implementations.local import LocalFileSystem

from blocks.storage import StorageSettings

__all__ = [
    "StorageSettings",
    "existing",
    "filesystem",
    "is_local",
    "is_remote",
    "join",
    "move",
    "read_bytes",
    "read_json",
    "remove",
    "write_bytes_atomic",
    "write_json_atomic",
]


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def filesystem(
    url: str, settings: StorageSettings | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path within it (no protocol)."""
    if url.startswith("s3://") or url.startswith("s3a://"):
        return _s3_filesystem(settings), url.split("://", 1)[1].rstrip("/")
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path.rstrip("/")
    path = url.removeprefix("file://")
    return LocalFileSystem(), os.path.abspath(path)


# The AWS environment an S3 client is built from when no settings say otherwise.
_AWS_ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
)
_s3_filesystems: dict[str, fsspec.AbstractFileSystem] = {}
_s3_filesystems_lock = threading.Lock()


def _s3_filesystem(settings: StorageSettings | None) -> fsspec.AbstractFileSystem:
    """One S3 filesystem per process, settings and AWS environment: a new one builds a new
    client, which costs more than a request (about 0.1 s), and a run asks for one at every step.
    Its listings are never cached: the flow reads what it has just written. (fsspec's own
    instance cache is keyed on the arguments alone, so it would keep a client built for an
    endpoint or credentials the environment no longer names.)"""
    options = settings.s3fs_options() if settings else {}
    # Kept in memory only, never logged: it holds the credentials it was built with.
    key = json.dumps(
        [os.getpid(), options, [os.environ.get(name) for name in _AWS_ENVIRONMENT]],
        sort_keys=True,
    )
    with _s3_filesystems_lock:
        fs = _s3_filesystems.get(key)
        if fs is None:
            import s3fs

            fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **options)
            _s3_filesystems[key] = fs
        return fs


def existing(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> list[bool]:
    """Whether each of `paths` exists. On an object store the requests go out together, so
    checking several paths costs about one round trip rather than one per path."""
    if isinstance(fs, AsyncFileSystem):

        async def gather() -> list[bool]:
            return list(await asyncio.gather(*(fs._exists(path) for path in paths)))

        return sync(fs.loop, gather)
    return [fs.exists(path) for path in paths]


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old object or the new one, never a partial one.

    Locally: write a sibling temporary file, then rename over. On S3 a single PUT is atomic.
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, payload: Any) -> None:
    write_bytes_atomic(fs, path, json.dumps(payload, sort_keys=True, indent=1).encode())


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The whole file, in one request on S3; FileNotFoundError if there is none.

    (Since s3fs can split large downloads, its `cat_file` asks for the object's size first and
    lists the prefix when the key is missing: two requests where one GET does.)"""
    if _splits_downloads(type(fs)):
        return fs.cat_file(path, max_concurrency=1)
    return fs.cat_file(path)


@functools.cache
def _splits_downloads(filesystem_type: type) -> bool:
    method = getattr(filesystem_type, "_cat_file", None)
    return method is not None and "max_concurrency" in inspect.signature(method).parameters


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any | None:
    try:
        return json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        return None


def move(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """Replace `target` with `source`: a rename locally, a server-side copy then delete on S3."""
    if is_local(fs):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
    else:
        fs.copy(source, target)
        fs.rm_file(source)


def remove(fs: fsspec.AbstractFileSystem, path: str, recursive: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)
