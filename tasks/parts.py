"""Part K of N of a source: what one child run of `enrich-partitioned` reads.

A source of N or more files is split by file (file i, in the source's sorted order, belongs to
part i mod N + 1), so each part reads only its own files. A source of fewer files (one large
Parquet file) is split by row: a row belongs to the part its id hashes to, so every part reads
the whole source and keeps about 1/N of it. Either way each row is in exactly one part, and the
same source always splits the same way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_PART = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_PARTS = 1000

SplitBy = Literal["file", "id"]


class PartError(ValueError):
    """A `part` parameter that cannot be used; the message gives the expected form."""


@dataclass(frozen=True)
class Part:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """The part's folder name: part-00003 for the third."""
        return f"part-{self.index:05d}"


def parse_part(text: str | None) -> Part | None:
    if not text:
        return None
    found = _PART.match(text)
    if found is None:
        raise PartError(f"part={text!r} is not of the form 'K/N' (e.g. '3/4': the third of four)")
    index, count = int(found.group(1)), int(found.group(2))
    if not 1 <= index <= count <= MAX_PARTS:
        raise PartError(f"part={text!r}: need 1 <= K <= N <= {MAX_PARTS}")
    return Part(index, count)


def split_by(num_files: int, count: int) -> SplitBy:
    return "file" if num_files >= count else "id"


def files_of(paths: tuple[str, ...], part: Part) -> tuple[str, ...]:
    """The part's files, out of the source's files in their sorted order."""
    return tuple(path for i, path in enumerate(paths) if i % part.count == part.index - 1)


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable 64-bit hash of each non-null id (as text), in order; nulls are skipped.

    The one id hash of the project: source validation finds duplicates with it, and parts
    are picked by it, so a night splits the same way whatever reads it."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")
            for value in pc.cast(ids, pa.string()).to_pylist()
            if value is not None
        ),
        dtype=np.uint64,
    )


def id_parts(ids: pa.Array | pa.ChunkedArray, count: int) -> np.ndarray:
    """The 1-based part of each id (null ids go to part 1, where validation refuses them)."""
    parts = np.ones(len(ids), dtype=np.int64)
    valid = pc.is_valid(ids).to_numpy(zero_copy_only=False)
    parts[valid] = (id_hashes(ids) % np.uint64(count)).astype(np.int64) + 1
    return parts


def in_part(ids: pa.Array | pa.ChunkedArray, part: Part) -> pa.Array:
    """A mask of the rows whose id belongs to `part`."""
    return pa.array(id_parts(ids, part.count) == part.index)
