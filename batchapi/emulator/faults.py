"""Seeded fault decisions.

Line and batch decisions are a hash of (seed, what, key) rather than draws from a shared
generator, so they do not depend on thread scheduling or on which process computes them.
"""

from __future__ import annotations

import hashlib
import random
import threading

from batchapi.models import Revision

# GAP: the statuses of injected faults. 429 is no documented batch status but is what a real
# service sheds load with; revision A's table adds 502 and 503 for its backend and router.
HTTP_FAULT_STATUSES: dict[Revision, tuple[int, ...]] = {
    Revision.B: (429, 500, 503),
    Revision.A: (429, 502, 503),
}


def draw(seed: int, *key: object) -> float:
    """A uniform number in [0, 1) fixed by the seed and the key."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def line_fails(seed: int, rate: float, batch_seq: int, index: int) -> bool:
    return rate > 0 and draw(seed, "line", batch_seq, index) < rate


def batch_fails(seed: int, rate: float, batch_seq: int) -> bool:
    return rate > 0 and draw(seed, "batch", batch_seq) < rate


class HttpFaults:
    """Decides, request by request, whether to answer with an injected 429 or 5xx."""

    def __init__(self, seed: int, rate: float, revision: Revision = Revision.B) -> None:
        self._rate = rate
        self._statuses = HTTP_FAULT_STATUSES[revision]
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def pick(self) -> int | None:
        if self._rate <= 0:
            return None
        with self._lock:
            if self._random.random() >= self._rate:
                return None
            return self._random.choice(self._statuses)
