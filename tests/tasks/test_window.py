"""The engine's policies: the adaptive in-flight window and the poll schedule."""

from __future__ import annotations

import pytest

from tasks.window import AdaptiveWindow, PollSchedule


def test_429s_shrink_the_window_once_per_burst_and_it_grows_back_gradually() -> None:
    window = AdaptiveWindow(1000)
    assert window.limit == 1000
    assert window.rate_limited(open_batches=100, now=10.0)
    assert window.limit == 90  # a little under what the provider accepted
    # Refusals of submissions that were already on the wire count once.
    assert not window.rate_limited(open_batches=100, now=10.2)
    assert window.limit == 90
    for _ in range(92):
        window.finished()
    assert window.limit == 91  # one slot per window's worth of finished batches
    # A storm: each burst shrinks again, never below one.
    for second in range(20, 60):
        window.rate_limited(open_batches=window.limit, now=float(second))
    assert window.limit == 1
    assert window.shrinks == 41


def test_the_window_never_grows_past_max_in_flight() -> None:
    window = AdaptiveWindow(4)
    for _ in range(100):
        window.finished()
    assert window.limit == 4
    with pytest.raises(ValueError):
        AdaptiveWindow(0)


def test_polls_wait_for_the_usual_duration_then_step_finely_while_batches_finish() -> None:
    schedule = PollSchedule(poll_interval=1.0)
    # Nothing seen yet: every poll interval, backing off slowly once a batch is old.
    assert schedule.next_poll(submitted_at=0.0, now=0.0) == 1.0
    assert schedule.next_poll(submitted_at=0.0, now=40.0) == pytest.approx(45.0)
    assert schedule.next_poll(submitted_at=0.0, now=400.0) == pytest.approx(410.0)  # capped
    # Until a batch has finished, the oldest open one is looked at every poll interval.
    assert schedule.next_poll(submitted_at=0.0, now=40.0, probe=True) == 41.0
    # Batches that all take about 30 s, each last seen open one interval before it was seen
    # finished: their midpoints say 29.4-29.7 s.
    for seen_open, seen_done in [(29.0, 30.0), (29.2, 30.2), (28.9, 29.9), (29.1, 30.1)]:
        schedule.finished(seen_open, seen_done)
    # Half a (quarter-interval) step before the low end of that.
    assert schedule.expected == pytest.approx(29.4 - 0.125, abs=0.05)
    # A new batch is first looked at just before batches like it usually finish ...
    first = schedule.next_poll(submitted_at=100.0, now=100.0)
    assert first == pytest.approx(100.0 + schedule.expected)
    # ... then in quarter-interval steps while they finish, so it is seen done soon after.
    assert schedule.next_poll(submitted_at=100.0, now=first) == pytest.approx(first + 0.25)
    # A straggler long past the usual range backs off.
    assert schedule.next_poll(submitted_at=100.0, now=190.0) > 190.0 + 1.0


def test_a_wide_interval_does_not_pull_the_estimate_early() -> None:
    schedule = PollSchedule(poll_interval=1.0)
    # Seen open right after submission, seen finished at 30 s: it finished late, not at 15 s;
    # the estimate moves half a step earlier than 30 s, not to the middle.
    schedule.finished(0.1, 30.0)
    assert schedule.expected == pytest.approx(29.5 - 0.125)


def test_the_usual_duration_follows_the_latest_batches() -> None:
    # A provider whose queue grew: hundreds of batches took 1 s, the latest ones take 3 s.
    schedule = PollSchedule(poll_interval=0.1)
    for _ in range(300):
        schedule.finished(0.95, 1.05)
    assert schedule.expected == pytest.approx(1.0, abs=0.05)
    for _ in range(40):
        schedule.finished(2.95, 3.05)
    # New batches are first looked at when the latest finished, not two seconds early.
    assert schedule.expected == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("duration", [3.0, 30.0, 300.0])
def test_batches_of_a_fixed_duration_are_seen_done_within_two_looks_and_a_step(
    duration: float,
) -> None:
    interval = duration / 10
    schedule = PollSchedule(poll_interval=interval)
    lags, looks = [], []
    for number in range(200):
        submitted = 1000.0 * number
        now, last_open, count = submitted, submitted, 0
        while True:
            now = schedule.next_poll(submitted, now, probe=True)
            count += 1
            if now - submitted >= duration:
                break
            last_open = now
        schedule.finished(last_open - submitted, now - submitted)
        lags.append(now - submitted - duration)
        looks.append(count)
    # Once a few batches have finished, every batch is seen done by its second look, less than
    # one step (a quarter of the poll interval) after it finished.
    assert max(looks[20:]) <= 2
    assert max(lags[20:]) <= interval / 4 + 1e-9


def test_spread_durations_are_polled_every_interval() -> None:
    schedule = PollSchedule(poll_interval=0.3)
    for duration in [1.5, 2.0, 3.0, 3.5, 4.0, 6.0, 9.0, 2.5]:
        schedule.finished(duration - 0.3, duration)
    first = schedule.next_poll(submitted_at=0.0, now=0.0)
    assert 1.0 < first < 2.0
    assert schedule.next_poll(submitted_at=0.0, now=first) == pytest.approx(first + 0.3)


def test_a_look_is_never_followed_within_a_step_when_the_estimate_moves_later() -> None:
    schedule = PollSchedule(poll_interval=1.0)
    for _ in range(4):
        schedule.finished(29.0, 29.5)
    first = schedule.next_poll(submitted_at=0.0, now=0.0)
    # Batches turn out to take a little longer: the usual duration moves 0.2 s later ...
    for _ in range(60):
        schedule.finished(29.2, 29.7)
    assert schedule.expected == pytest.approx(first + 0.2)
    # ... but the batch just looked at is looked at again a step later, not 0.2 s later.
    assert schedule.next_poll(submitted_at=0.0, now=first) == pytest.approx(first + 0.25)
