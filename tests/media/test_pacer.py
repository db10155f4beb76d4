"""Drift-free pacer: due-tick arithmetic, bounded catch-up, async ticks and the shared clock."""

from __future__ import annotations

import asyncio

import pytest

from agentd.media.pacer import MediaClock, Pacer, Tick, ticks


def test_ticks_are_due_on_the_grid_from_start() -> None:
    pacer = Pacer(start=100.0, interval=0.02)
    assert pacer.due(99.99) == []
    assert pacer.due(100.0) == [Tick(0, 100.0, 0)]
    assert pacer.due(100.0) == []  # each tick once
    assert pacer.due(100.019) == []
    assert [t.index for t in pacer.due(100.02)] == [1]
    assert pacer.deadline() == pytest.approx(100.04)


def test_late_wakeups_do_not_accumulate_drift() -> None:
    pacer = Pacer(start=0.0, interval=0.02, max_burst=3)
    delivered = []
    # Every wake-up is 1.5 ms late, as a real sleep might be; the grid does not move.
    for n in range(1000):
        delivered += pacer.due(n * 0.02 + 0.0015)
    assert [t.index for t in delivered] == list(range(1000))
    assert delivered[-1].due == pytest.approx(999 * 0.02)
    assert pacer.skipped == 0


def test_exact_grid_points_count_despite_float_error() -> None:
    pacer = Pacer(start=0.0, interval=0.02)
    count = 0
    for n in range(5000):
        count += len(pacer.due(n * 0.02))  # n*0.02 may round a hair below the grid
    assert count == 5000


def test_falling_behind_catches_up_with_a_bounded_burst() -> None:
    pacer = Pacer(start=0.0, interval=0.02, max_burst=3)
    pacer.due(0.0)
    burst = pacer.due(0.2)  # ticks 1..10 are due at once
    assert [t.index for t in burst] == [8, 9, 10]
    assert burst[0].skipped == 7 and burst[1].skipped == 0
    assert pacer.skipped == 7
    assert pacer.due(0.21) == []
    assert [t.index for t in pacer.due(0.22)] == [11]


def test_small_lag_is_caught_up_without_skipping() -> None:
    pacer = Pacer(start=0.0, interval=0.02, max_burst=3)
    pacer.due(0.0)
    assert [t.index for t in pacer.due(0.045)] == [1, 2]
    assert pacer.skipped == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Pacer(0.0, interval=0)
    with pytest.raises(ValueError):
        Pacer(0.0, max_burst=0)


async def test_async_ticks_keep_a_20ms_mean_interval() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals = []
    async for tick in ticks(0.02, start=start):
        arrivals.append((tick, loop.time()))
        if tick.index >= 50:
            break
    # 50 intervals take 1 s: the mean cannot drift even if each wake-up is a little late.
    assert arrivals[-1][0].due - start == pytest.approx(1.0)
    elapsed = arrivals[-1][1] - start
    assert 0.99 <= elapsed <= 1.2
    assert all(now >= tick.due - 1e-6 for tick, now in arrivals)


async def test_media_clock_calls_each_subscriber_every_tick_and_stops_when_empty() -> None:
    clock = MediaClock()
    calls: dict[str, list[int]] = {"a": [], "b": []}
    key_a = clock.subscribe(lambda tick, now: calls["a"].append(tick.index))
    clock.subscribe(lambda tick, now: calls["b"].append(tick.index))

    def broken(tick: Tick, now: float) -> None:
        raise RuntimeError("boom")

    key_c = clock.subscribe(broken)
    await asyncio.sleep(0.25)
    clock.unsubscribe(key_a)
    clock.unsubscribe(key_c)
    assert 8 <= len(calls["a"]) <= 14
    # Same ticks for everyone, in order, despite a subscriber that raises.
    assert calls["b"][: len(calls["a"])] == calls["a"]
    assert calls["a"] == list(range(calls["a"][0], calls["a"][0] + len(calls["a"])))
    assert clock.subscribers == 1
    for key in [k for callbacks in clock._phases.values() for k in callbacks]:
        clock.unsubscribe(key)
    assert clock.subscribers == 0
    await asyncio.sleep(0.05)
    assert clock._task is None


async def test_media_clock_runs_phases_in_order_each_tick() -> None:
    clock = MediaClock(spin=0.001)
    order: list[tuple[int, str]] = []
    keys = [
        clock.subscribe(lambda tick, now: order.append((tick.index, "late")), phase=1),
        clock.subscribe(lambda tick, now: order.append((tick.index, "early")), phase=0),
    ]
    await asyncio.sleep(0.1)
    for key in keys:
        clock.unsubscribe(key)
    assert len(order) >= 6
    for i in range(0, len(order) - 1, 2):
        assert order[i][1] == "early" and order[i + 1] == (order[i][0], "late")


def test_media_clock_rejects_a_spin_longer_than_the_interval() -> None:
    with pytest.raises(ValueError):
        MediaClock(interval=0.02, spin=0.02)
