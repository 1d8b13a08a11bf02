"""Seeded fault decisions.

Line and batch decisions are a hash of (seed, what, key) rather than draws from a shared
generator, so they do not depend on thread scheduling or on which process computes them.
"""

from __future__ import annotations

import hashlib
import random
import threading

HTTP_FAULT_STATUSES: tuple[int, ...] = (429, 500, 503)


def draw(seed: int, *key: object) -> float:
    """A uniform number in [0, 1) fixed by the seed and the key."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def line_fails(seed: int, rate: float, batch_seq: int, index: int) -> bool:
    return rate > 0 and draw(seed, "line", batch_seq, index) < rate


def batch_fails(seed: int, rate: float, batch_seq: int) -> bool:
    return rate > 0 and draw(seed, "batch", batch_seq) < rate


class HttpFaults:
    """Decides, request by request, whether to answer with an injected 429/500/503."""

    def __init__(self, seed: int, rate: float) -> None:
        self._rate = rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def pick(self) -> int | None:
        if self._rate <= 0:
            return None
        with self._lock:
            if self._random.random() >= self._rate:
                return None
            return self._random.choice(HTTP_FAULT_STATUSES)
