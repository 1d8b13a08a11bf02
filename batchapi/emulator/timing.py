"""How long a batch takes from acceptance to its terminal status: `latency`, optionally with a
seeded jitter. The clock starts when the batch is accepted, not when the emulator's own worker
gets to it, so the emulator's queue on a busy machine does not add to it.

With `latency_jitter` = sigma > 0, batch number `seq` takes

    latency * exp(sigma * z) * (straggler_factor if it straggles else 1)

where z is a standard normal and "straggles" a Bernoulli(straggler_share) draw, both fixed by
(seed, seq). The lognormal body has median `latency` and a right skew; the stragglers add a
tail several times the median, as a busy shared backend would. Draws are hashes
of (seed, seq), so the same seed gives every batch the same time in any process.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.faults import draw

_STANDARD_NORMAL = NormalDist()
# Keeps inv_cdf away from 0 and 1, where it is infinite.
_EPSILON = 1e-12


def in_progress_seconds(config: EmulatorConfig, seq: int) -> float:
    """Minimum seconds from batch `seq`'s acceptance to its terminal status."""
    if config.latency <= 0 or config.latency_jitter <= 0:
        return config.latency
    uniform = min(max(draw(config.seed, "latency", seq), _EPSILON), 1 - _EPSILON)
    factor = math.exp(config.latency_jitter * _STANDARD_NORMAL.inv_cdf(uniform))
    if draw(config.seed, "straggler", seq) < config.straggler_share:
        factor *= config.straggler_factor
    return config.latency * factor
