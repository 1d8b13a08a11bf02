"""How many batches to keep open, and when to look at each one again.

Two small policies of the batch engine, kept apart from its I/O so they can be read and tested
on their own:

- `AdaptiveWindow`: at most `max_in_flight` batches open at the provider. A 429 on submit
  shrinks the window to a little under what was open when the provider refused (one shrink per
  burst of refusals), and every finished batch grows it back by 1/window, so the window regains
  one slot per window's worth of finished batches (TCP's congestion avoidance). A provider that
  caps open batches at N is then run at 90-100% of N instead of being pushed into 429s.
- `PollSchedule`: a batch is first looked at when batches like it usually finish (half a step
  before a low quantile of the durations seen so far), then in steps of at most a poll
  interval, backing off slowly for stragglers. Until anything has finished, only the oldest
  open batch (a probe) is looked at every interval. On an API that takes minutes this keeps
  polls to about two per batch, and a batch of a fixed duration is seen done within a step.
"""

from __future__ import annotations

import statistics
from collections import deque


class AdaptiveWindow:
    def __init__(self, max_in_flight: int, shrink_to: float = 0.9, cooldown: float = 1.0) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max = max_in_flight
        self.size = float(max_in_flight)
        self.shrink_to = shrink_to
        self.cooldown = cooldown
        self.shrinks = 0
        self._last_shrink = float("-inf")

    @property
    def limit(self) -> int:
        return max(1, int(self.size))

    def rate_limited(self, open_batches: int, now: float) -> bool:
        """The provider refused a batch with `open_batches` open. True if the window shrank
        (refusals from submissions already on the wire count once)."""
        if now - self._last_shrink < self.cooldown:
            return False
        self._last_shrink = now
        self.size = max(1.0, min(self.size, float(max(1, open_batches))) * self.shrink_to)
        self.shrinks += 1
        return True

    def finished(self) -> None:
        """A batch finished: grow by 1/window, up to max_in_flight."""
        self.size = min(float(self.max), self.size + 1.0 / self.size)


class PollSchedule:
    """When to look at an open batch again.

    For each finished batch the engine reports the age at which it was last seen open and the
    age at which it was seen finished, which bound when it finished. A new batch is first polled
    half a step before batches like it usually finish (a low quantile of the estimates of the
    last `history` batches: a provider's durations drift with its queue, and the last few dozen
    batches say more about the next one than the last few hundred),
    then in short steps while batches like it are finishing (a quarter of the poll interval
    when they all take about as long, up to the poll interval when their durations spread), and
    past the usual range with a slow backoff for stragglers, at most ten poll intervals apart.
    """

    def __init__(self, poll_interval: float, history: int = 32) -> None:
        self.poll_interval = poll_interval
        self._durations: deque[float] = deque(maxlen=history)
        self._since_estimate = 0
        self._low: float | None = None
        self._high = 0.0
        self._step = poll_interval

    def finished(self, last_seen_open: float, seen_finished: float) -> None:
        """A batch was last seen open `last_seen_open` seconds after it was submitted, and
        finished `seen_finished` seconds after."""
        # It finished in between. A wide gap (the last look was long before, often its
        # submission) says little, and its midpoint would pull the estimate far too early: take
        # half a step before instead, so first looks that keep finding batches done come half a
        # step earlier each time, until one finds a batch still open.
        if seen_finished - last_seen_open <= 2 * self.poll_interval:
            self._durations.append((last_seen_open + seen_finished) / 2)
        else:
            self._durations.append(max(last_seen_open, seen_finished - self._step / 2))
        self._since_estimate += 1
        if len(self._durations) > 16 and self._since_estimate < 16:
            return
        self._since_estimate = 0
        if len(self._durations) >= 4:
            cut = statistics.quantiles(self._durations, n=20, method="inclusive")
            low, high = cut[1], cut[17]  # the 10th and 90th percentiles
        else:
            low = high = min(self._durations)
        interval = self.poll_interval
        self._step = min(interval, max(interval / 4, (high - low) / 8))
        # Half a step early: the first look finds a batch open or just done, and the second, a
        # step later, finds it done. (A fixed fraction early would be seconds early for batches
        # that take minutes, and their third looks come out of the polling budget.)
        self._low = max(0.0, low - self._step / 2)
        self._high = high

    @property
    def expected(self) -> float | None:
        """When a batch is first looked at, in seconds after its submission."""
        return self._low

    def first_look(self, submitted_at: float) -> float:
        """When a batch submitted at `submitted_at` is first looked at, once a batch has
        finished (`expected` is known)."""
        assert self._low is not None
        return submitted_at + max(self._low, min(self.poll_interval, self._step))

    def next_poll(self, submitted_at: float, now: float, probe: bool = False) -> float:
        """When to poll a batch submitted at `submitted_at` (monotonic seconds) next. Until a
        batch has finished, a `probe` (the oldest open batch, which usually finishes first) is
        looked at every poll interval and the others back off."""
        age = now - submitted_at
        interval = self.poll_interval
        if self._low is None:
            if probe:
                return now + interval
            return now + min(max(interval, age / 8), 10 * interval)
        first = self.first_look(submitted_at)
        if first > now or age < self._high + interval:
            # (At least a step after a look: the estimate may have moved since the last one.)
            return max(first, now + self._step)
        overdue = age - self._high
        return now + min(max(interval, overdue / 8), 10 * interval)
