"""The batch engine against a real emulator over HTTP, without Prefect around it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from batchapi.emulator.runner import RunningEmulator
from batchapi.models import BatchLimits
from blocks.batch_api import BatchApi
from tasks.batch import BatchEngine, BatchWaitTimeout, EngineOptions, Progress
from tasks.ledger import Ledger
from tasks.shard import build_group_lines
from tasks.spec import parse_enrichments
from tasks.state import RunState
from tests.conftest import TEST_API_KEY, free_port
from tests.flows.conftest import ENRICHMENTS, make_documents
from tests.flows.fault_proxy import LoopbackProxy

ENRICHMENT_SPECS = parse_enrichments(ENRICHMENTS)


def _engine(
    tmp_path,
    base_url: str,
    documents: int,
    groups: int = 1,
    max_lines: int = 10,
    timeout: float = 60.0,
    **options: object,
) -> tuple[BatchEngine, list]:
    state = RunState(str(tmp_path / "out")).begin("run")
    settings = {
        "limits": BatchLimits(max_lines=max_lines),
        "max_in_flight": 8,
        "parallel_submissions": 4,
        "poll_interval_seconds": 0.05,
        "timeout_seconds": timeout,
        "deadline": time.time() + timeout,
        "max_line_attempts": 3,
        "models": {e.name: e.model for e in ENRICHMENT_SPECS},
        "total_lines": documents * len(ENRICHMENT_SPECS),
        **options,
    }
    engine = BatchEngine(
        Ledger(state),
        BatchApi(base_url=base_url, api_key=TEST_API_KEY, max_lines_per_batch=max_lines),
        EngineOptions(**settings),  # type: ignore[arg-type]
    )
    per_group = documents // groups
    futures = []
    for index in range(groups):
        table = make_documents(per_group, start=index * per_group)
        lines = build_group_lines(table, index, ENRICHMENT_SPECS, "id", "text")
        futures.append(engine.add_group(lines, list(lines.requests)))
    engine.close_input()
    return engine, futures


def _count_turns(engine: BatchEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the turns of the engine's loop (each turn looks for polls to start once)."""
    turns = [0]
    start_polls = engine._start_polls

    def counted(now: float) -> None:
        turns[0] += 1
        start_polls(now)

    monkeypatch.setattr(engine, "_start_polls", counted)
    return turns


def test_one_window_for_all_groups_and_every_line_once(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    emulator = emulator_factory(latency=0.2, workers=2)
    engine, futures = _engine(tmp_path, emulator.base_url, documents=60, groups=3)
    report = asyncio.run(engine.run())
    outcomes = [f.result(timeout=0) for f in futures]
    assert [o.results.num_rows for o in outcomes] == [60, 60, 60]
    assert all(o.results.column("error").null_count == 60 for o in outcomes)
    # 20 documents x 3 enrichments per group, 10 lines per batch: 6 batches per group.
    assert report.batches_submitted == emulator.stats()["batches_created"] == 18
    # A batch id is written with the next shard's intent: about one write per batch, not one
    # for the intent and one for the id (36 here). A few ids are written on their own: the
    # last ones once nothing is left to send (up to one per submission slot), one that waited
    # half a second for the next intent, and the final write (15 to 19 measured).
    assert engine.ledger.writes <= report.batches_submitted + 5


def test_a_cap_on_open_batches_shrinks_the_window_and_nothing_is_paid_twice(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    emulator = emulator_factory(latency=0.3, max_open_batches=3, open_cap_retry_after=1)
    engine, futures = _engine(tmp_path, emulator.base_url, documents=60, groups=2, max_in_flight=40)
    report = asyncio.run(engine.run())
    stats = emulator.stats()
    assert report.rate_limited == stats["rejected_open_cap"] > 0
    # Shrunk to what the provider accepts (and regrowing one slot per window of batches).
    assert engine.window.limit <= 6 < engine.window.max
    assert report.window_shrinks >= 1
    assert stats["batches_created"] == report.batches_submitted == 18
    assert sum(f.result(timeout=0).results.num_rows for f in futures) == 180


def test_retry_after_is_never_cut_short(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    emulator = emulator_factory(latency=0.1, max_open_batches=1, open_cap_retry_after=2)
    engine, _ = _engine(
        tmp_path, emulator.base_url, documents=10, max_in_flight=4, parallel_submissions=1
    )
    refusals: list[float] = []
    sends: list[float] = []
    original = engine._submit_refused

    def refused(exc):  # type: ignore[no-untyped-def]
        refusals.append(time.monotonic())
        original(exc)

    async def record_sends() -> None:
        assert engine._client is not None
        client_submit = engine._client.submit_jsonl

        async def submit(*args, **kwargs):  # type: ignore[no-untyped-def]
            sends.append(time.monotonic())
            return await client_submit(*args, **kwargs)

        engine._client.submit_jsonl = submit  # type: ignore[method-assign]

    engine._submit_refused = refused  # type: ignore[method-assign]

    async def drive() -> None:
        runner = asyncio.ensure_future(engine.run())
        while engine._client is None:
            await asyncio.sleep(0.001)
        await record_sends()
        await runner

    asyncio.run(drive())
    assert refusals, "the cap of one open batch was never hit"
    for refused_at in refusals:
        later = [t for t in sends if t > refused_at]
        assert later and later[0] - refused_at >= 2.0


def test_the_deadline_holds_while_every_request_hangs(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    emulator = emulator_factory()
    with LoopbackProxy(emulator.base_url, delay=30.0) as proxy:
        engine, _ = _engine(tmp_path, proxy.url, documents=10, timeout=2.0)
        started = time.monotonic()
        with pytest.raises(BatchWaitTimeout, match="Rerun the same job"):
            asyncio.run(engine.run())
        assert time.monotonic() - started < 2.0 + 3 * 0.05 + 1.0


def test_an_api_that_never_answers_fails_early_naming_the_url(tmp_path) -> None:
    from tasks.batch import ApiUnreachableError

    dead = f"http://127.0.0.1:{free_port()}"
    engine, _ = _engine(tmp_path, dead, documents=10, unreachable_after_seconds=3.0)
    with pytest.raises(ApiUnreachableError) as caught:
        asyncio.run(engine.run())
    message = str(caught.value)
    assert dead in message and "nothing was submitted" in message
    assert "reachable" in message
    assert engine.report.batches_submitted == 0


def test_batches_of_a_fixed_duration_are_polled_about_twice_each(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    # 80 batches of 1 s, 8 open at once: ten rounds. Until the first one finishes only the
    # oldest is polled every interval (about ten looks) and the others back off; the next round
    # corrects the first estimate (a third look for some); after that each batch is looked at
    # just before it usually finishes and a step later. Ten rounds, so that the first two
    # (about 3 looks per batch) do not decide the average.
    emulator = emulator_factory(latency=1.0, workers=1)
    engine, futures = _engine(
        tmp_path, emulator.base_url, documents=80, groups=4, max_lines=3,
        poll_interval_seconds=0.1,
    )  # fmt: skip
    report = asyncio.run(engine.run())
    assert sum(f.result(timeout=0).results.num_rows for f in futures) == 240  # 3 per document
    assert report.batches_submitted == 80
    assert report.polls <= 2.5 * report.batches_submitted


def test_every_ledger_write_leaves_at_most_parallel_submissions_in_doubt(
    tmp_path, emulator_factory: Callable[..., RunningEmulator], monkeypatch
) -> None:
    # A crash leaves the ledger as last written: the shards in it without a batch id are the
    # ones in doubt, and there are never more than `parallel_submissions` of them, however
    # the writes and the submissions interleave. The same writes carry the batch ids received
    # and the next intents: about one write per batch.
    emulator = emulator_factory(latency=0.2)
    in_doubt: list[int] = []

    def slow_submits(method: str, path: str) -> float:
        return 0.05 if method == "POST" else 0.0

    with LoopbackProxy(emulator.base_url, delay=slow_submits) as proxy:
        engine, futures = _engine(tmp_path, proxy.url, documents=40, max_lines=3, max_in_flight=12)
        state = engine.ledger._state
        write = state.write_ledger

        def write_and_count(payload: bytes) -> None:
            shards = json.loads(payload)["shards"].values()
            in_doubt.append(sum(entry["batch_id"] is None for entry in shards))
            time.sleep(0.01)
            write(payload)

        monkeypatch.setattr(state, "write_ledger", write_and_count)
        report = asyncio.run(engine.run())
    assert report.batches_submitted == 40
    assert sum(f.result(timeout=0).results.num_rows for f in futures) == 120
    assert max(in_doubt) <= 4  # parallel_submissions
    assert max(in_doubt) >= 2  # (submissions did overlap)
    assert len(in_doubt) <= report.batches_submitted, in_doubt


def test_the_loop_sleeps_while_a_slow_ledger_write_is_on_its_way(
    tmp_path, emulator_factory: Callable[..., RunningEmulator], monkeypatch
) -> None:
    # On object storage a ledger write takes tens of milliseconds. While the write that settles
    # overdue batch ids is on its way, the engine's loop waits for it (its end wakes the loop)
    # instead of turning again and again with nothing to do.
    emulator = emulator_factory(latency=0.5, workers=1)
    engine, futures = _engine(
        tmp_path, emulator.base_url, documents=12, max_lines=3, parallel_submissions=2
    )
    state = engine.ledger._state
    write = state.write_ledger

    def write_slowly(payload: bytes) -> None:
        time.sleep(0.7)  # longer than SETTLE_AFTER_SECONDS: ids are overdue while it runs
        write(payload)

    monkeypatch.setattr(state, "write_ledger", write_slowly)
    turns = _count_turns(engine, monkeypatch)
    started = time.monotonic()
    report = asyncio.run(engine.run())
    elapsed = time.monotonic() - started
    assert sum(f.result(timeout=0).results.num_rows for f in futures) == 36
    assert report.batches_submitted == 12
    # A turn per poll interval (0.05 s) and one per request answered or write done, at most.
    assert turns[0] <= 20 * elapsed + 6 * report.batches_submitted + 20, (turns, elapsed)


def test_the_loop_sleeps_while_the_first_requests_hang(
    tmp_path, emulator_factory: Callable[..., RunningEmulator], monkeypatch
) -> None:
    # Past `unreachable_after_seconds` with requests still on the wire and none failed yet,
    # the check for an unreachable API waits for a failure; the loop must not turn meanwhile.
    emulator = emulator_factory()
    with LoopbackProxy(emulator.base_url, delay=30.0) as proxy:
        engine, _ = _engine(
            tmp_path, proxy.url, documents=10, timeout=2.5, unreachable_after_seconds=0.5
        )
        turns = _count_turns(engine, monkeypatch)
        started = time.monotonic()
        with pytest.raises(BatchWaitTimeout):
            asyncio.run(engine.run())
        elapsed = time.monotonic() - started
    assert turns[0] <= 20 * elapsed + 20, (turns, elapsed)


def test_a_finished_batch_frees_its_slot_before_its_output_is_downloaded(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    # A large output takes a while to download from a remote API; the batch is no longer open
    # at the provider, so its place in the window goes to the next shard at once.
    emulator = emulator_factory()
    arrivals: list[tuple[str, float]] = []

    def slow_outputs(method: str, path: str) -> float:
        kind = "output" if path.endswith("/output") else "submit" if method == "POST" else "poll"
        arrivals.append((kind, time.monotonic()))
        return 1.5 if kind == "output" else 0.0

    with LoopbackProxy(emulator.base_url, delay=slow_outputs) as proxy:
        engine, futures = _engine(
            tmp_path,
            proxy.url,
            documents=4,
            max_lines=6,
            max_in_flight=1,
            parallel_submissions=1,
            poll_interval_seconds=1.0,
        )
        report = asyncio.run(engine.run())
    assert report.batches_submitted == 2
    assert sum(f.result(timeout=0).results.num_rows for f in futures) == 12
    submits = [t for kind, t in arrivals if kind == "submit"]
    outputs = [t for kind, t in arrivals if kind == "output"]
    # Each next submission went out while the previous batch's output was still on its way.
    for output_at, next_submit_at in zip(outputs, submits[1:], strict=False):
        assert next_submit_at - output_at < 0.5, (outputs, submits)


def test_a_slow_progress_update_does_not_hold_the_window(
    tmp_path, emulator_factory: Callable[..., RunningEmulator]
) -> None:
    # Progress goes to the Prefect API, which may be far away: while an update is on its way,
    # batches are still polled, fetched and replaced.
    emulator = emulator_factory()
    engine, futures = _engine(tmp_path, emulator.base_url, documents=12, max_lines=3)
    done_during_first_update: list[int] = []

    def publish_slowly(progress: object) -> None:
        if done_during_first_update:
            return
        give_up = time.monotonic() + 5.0
        while engine._batches_done == 0 and time.monotonic() < give_up:
            time.sleep(0.01)
        done_during_first_update.append(engine._batches_done)

    engine.on_progress = publish_slowly
    report = asyncio.run(engine.run())
    assert sum(f.result(timeout=0).results.num_rows for f in futures) == 36
    assert report.batches_submitted == 12
    assert done_during_first_update and done_during_first_update[0] > 0


@pytest.mark.parametrize(
    ("eta_seconds", "says"),
    [(6.4, "(in 6 s)"), (59.4, "(in 59 s)"), (1000, "(in 17 min)"), (18_250, "(in 5 h 04 min)")],
)
def test_the_status_line_gives_the_finish_in_units_a_reader_can_use(
    eta_seconds: float, says: str
) -> None:
    progress = Progress(
        batches_done=10,
        batches_open=5,
        batches_queued=20,
        lines_done=500,
        lines_total=1750,
        rate_limited=2,
        window=5,
        eta_seconds=eta_seconds,
    )

    def finish() -> str:
        return time.strftime("%H:%M", time.localtime(time.time() + eta_seconds))

    before = finish()
    line = progress.describe()
    assert line.endswith(says), line
    # (A minute may turn between the two readings of the clock.)
    assert any(f"estimated finish {at}" in line for at in (before, finish())), line
    assert "batches 10 done, 5 open, 20 queued (window 5); lines 500 of 1750 (29%); 429s 2" in line
