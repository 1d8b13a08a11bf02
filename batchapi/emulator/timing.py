"""How long a batch stays in progress: `latency`, optionally with a seeded jitter.

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
    """Minimum seconds batch `seq` is shown in progress."""
    if config.latency <= 0 or config.latency_jitter <= 0:
        return config.latency
    uniform = min(max(draw(config.seed, "latency", seq), _EPSILON), 1 - _EPSILON)
    factor = math.exp(config.latency_jitter * _STANDARD_NORMAL.inv_cdf(uniform))
    if draw(config.seed, "straggler", seq) < config.straggler_share:
        factor *= config.straggler_factor
    return config.latency * factor
