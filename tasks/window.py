"""How many batches to keep open, and when to look at each one again.

Two small policies of the batch engine, kept apart from its I/O so they can be read and tested
on their own:

- `AdaptiveWindow`: at most `max_in_flight` batches open at the provider. A 429 on submit
  shrinks the window to a little under what was open when the provider refused (one shrink per
  burst of refusals), and every finished batch grows it back by 1/window, so the window regains
  one slot per window's worth of finished batches (TCP's congestion avoidance). A provider that
  caps open batches at N is then run at 90-100% of N instead of being pushed into 429s.
- `PollSchedule`: a batch is first looked at when batches like it usually finish (a low
  quantile of the durations seen so far), then every poll interval, backing off slowly for
  stragglers. On an API that takes minutes this keeps polls to a few per batch without
  noticing a finished batch later than one poll interval.
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
    def __init__(self, poll_interval: float, history: int = 256, quantile: float = 0.1) -> None:
        self.poll_interval = poll_interval
        self._durations: deque[float] = deque(maxlen=history)
        self._quantile = quantile
        self._expected: float | None = None
        self._since_estimate = 0

    def finished(self, duration: float) -> None:
        """A batch was seen finished `duration` seconds after it was submitted."""
        self._durations.append(duration)
        self._since_estimate += 1
        if self._expected is None or self._since_estimate >= 16:
            self._since_estimate = 0
            if len(self._durations) >= 4:
                cut = statistics.quantiles(self._durations, n=20, method="inclusive")
                # A batch is rarely done before most batches are: look first at 90% of a low
                # quantile of what was seen.
                self._expected = 0.9 * cut[max(0, round(self._quantile * 20) - 1)]
            else:
                self._expected = 0.9 * min(self._durations)

    @property
    def expected(self) -> float | None:
        return self._expected

    def next_poll(self, submitted_at: float, now: float) -> float:
        """When to poll a batch submitted at `submitted_at` (monotonic seconds) next."""
        age = now - submitted_at
        expected = self._expected or 0.0
        if age < expected:
            return submitted_at + max(expected, self.poll_interval)
        overdue = age - expected
        return now + min(max(self.poll_interval, overdue / 8), 10 * self.poll_interval)
