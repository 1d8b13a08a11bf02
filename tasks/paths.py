"""Refuse overlapping source and destination paths before anything is paid for.

A destination inside the source (or a source glob that matches the destination's files) makes
the next run enrich its own output; a source inside the destination makes readers of the
output see source rows; a destination inside another destination's dataset makes each
dataset's readers see the other's rows. Each is refused with both paths named and the fix:
use sibling folders, e.g. `data/corpus/` and `data/enriched/`.
"""

from __future__ import annotations

import os
import posixpath
import re

from tasks.sinks import check_destination
from tasks.sinks.base import DELTA_LOG
from tasks.sinks.parquet import OUTPUT_FILE
from tasks.sources.base import has_glob, visible
from tasks.state import LEGACY_STATE_FOLDER, DestinationPathError, state_root
from tasks.storage import StorageSettings, existing, filesystem, is_local, join

# Paths a run writes, relative to the destination and to its state folder: what a source glob
# must not match.
_DESTINATION_PROBES = (
    OUTPUT_FILE,
    "part-00001-00000000-0000-0000-0000-000000000000-c000.zstd.parquet",
    f"{DELTA_LOG}/00000000000000000000.json",
)
_STATE_PROBES = (
    "generation.json",
    "lock.json",
    "gen-000001/ledger.json",
    "gen-000001/groups/0.parquet",
    f"gen-000001/staging/{OUTPUT_FILE}",
)


class PathOverlapError(DestinationPathError):
    """Source and destination (or two destinations) overlap; the message names both."""


def _location(url: str, settings: StorageSettings | None) -> tuple[str, str, str]:
    """(kind, path, prefix): the storage kind, the path within it, and the prefix that turns
    the path back into a URL for messages."""
    fs, path = filesystem(url, settings)
    if url.startswith(("s3://", "s3a://")):
        return "s3", path.rstrip("/"), "s3://"
    if is_local(fs):
        return "local", os.path.realpath(path), ""
    protocol = url.split("://", 1)[0]
    return protocol, path.rstrip("/"), f"{protocol}://"


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/") or folder == ""


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """fsspec's glob as a regex: `*` and `?` within one path part, `**` across parts."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and pattern.find("]", i + 1) > i:
            end = pattern.find("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _suggestion(folder: str, prefix: str) -> str:
    """A destination beside `folder` rather than in it."""
    return f"destination {prefix}{folder.rstrip('/')}-enriched beside it"


def check_source_and_destination(
    source: str, destination: str, settings: StorageSettings | None = None
) -> None:
    """Refuse a destination inside the source, a source glob that would read the
    destination, and a source inside the destination or its working state."""
    src_kind, src_path, src_prefix = _location(source, settings)
    dst_kind, dst_path, dst_prefix = _location(destination, settings)
    if src_kind != dst_kind:
        return
    state = state_root(dst_path)
    shown_dst = f"{dst_prefix}{dst_path}"
    if has_glob(src_path):
        fixed = src_path[: min(src_path.find(c) for c in "*?[" if c in src_path)]
        glob_root = fixed.rsplit("/", 1)[0]
        if _inside(glob_root, dst_path) or _inside(glob_root, state):
            raise PathOverlapError(
                f"source {source!r} is inside the destination {shown_dst!r} (or its working "
                "state): readers of the destination would take the source files for output "
                "rows. Keep source and destination in sibling folders, e.g. "
                f"{_suggestion(glob_root, dst_prefix)}"
            )
        regex = _glob_regex(src_path)
        probes = [join(dst_path, p) for p in _DESTINATION_PROBES]
        probes += [join(state, p) for p in _STATE_PROBES]
        for probe in probes:
            if regex.match(probe) and visible(probe, glob_root):
                raise PathOverlapError(
                    f"source glob {source!r} would read the destination {shown_dst!r} (it "
                    f"matches {dst_prefix}{probe}): the next run would enrich its own "
                    f"output. Narrow the glob, or write to a destination outside "
                    f"{src_prefix}{glob_root}"
                )
        return
    if _inside(dst_path, src_path):
        raise PathOverlapError(
            f"destination {shown_dst!r} is inside the source {source!r}: the next run would "
            "read the enriched output as documents. Use sibling folders, e.g. "
            f"{_suggestion(src_path, dst_prefix)}"
        )
    if _inside(src_path, dst_path) or _inside(src_path, state):
        raise PathOverlapError(
            f"source {source!r} is inside the destination {shown_dst!r} (or its working "
            f"state, {dst_prefix}{state}): readers of the destination would take the source "
            "files for output rows. Keep source and destination in sibling folders, e.g. "
            f"{_suggestion(posixpath.dirname(src_path), dst_prefix)}"
        )


def check_enclosing_datasets(destination: str, settings: StorageSettings | None = None) -> None:
    """Refuse a destination inside the folder of another destination's dataset."""
    fs, root = filesystem(destination, settings)
    _, path, prefix = _location(destination, settings)
    # Every enclosing folder up to the bucket or filesystem root, nearest first, with the marks
    # a dataset leaves there; all asked at once (on S3 each check is a request or two).
    marks: list[tuple[str, str]] = []
    folder = posixpath.dirname(root.rstrip("/"))
    while True:
        try:
            other_state = state_root(folder)
        except DestinationPathError:
            break  # the bucket or filesystem root: no dataset above
        marks += [
            (folder, join(folder, OUTPUT_FILE)),
            (folder, join(folder, DELTA_LOG)),
            (folder, join(other_state, "generation.json")),
            (folder, join(folder, LEGACY_STATE_FOLDER, "generation.json")),
        ]
        parent = posixpath.dirname(folder)
        if parent == folder:
            break
        folder = parent
    found = existing(fs, [mark for _, mark in marks])
    for (folder, _), exists in zip(marks, found, strict=True):
        if exists:
            other = f"{prefix}{folder}"
            name = posixpath.basename(root.rstrip("/"))
            sibling = f"{prefix}{posixpath.dirname(folder)}/{posixpath.basename(folder)}-{name}"
            raise PathOverlapError(
                f"destination {prefix + path!r} is inside the dataset of another destination, "
                f"{other!r}: readers of {other} would take this run's files for rows of "
                f"theirs. Use sibling folders, e.g. {sibling!r} beside {other!r}"
            )


def check_paths(
    source: str,
    destination: str,
    output_format: str = "parquet",
    settings: StorageSettings | None = None,
) -> None:
    """Every path check the run makes before it pays for anything; raises
    `DestinationPathError` (a `ValueError`) naming the paths and the fix."""
    _, root = filesystem(destination, settings)
    try:
        state_root(root)
    except DestinationPathError:
        raise DestinationPathError(
            f"destination {destination!r} is a bucket or filesystem root: give a folder inside "
            f"it, e.g. {destination.rstrip('/')}/enriched (the run's working state is kept "
            "beside the destination folder)"
        ) from None
    check_source_and_destination(source, destination, settings)
    check_enclosing_datasets(destination, settings)
    check_destination(output_format, destination, settings)
