"""The queue of admitted runs and the window of pending one-shots, on the fake clock.

Both are pure: these tests drive them with times from a `FakeClock` and play the
store's part with a sorted list, as the scheduler does with `pending_runs`.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta

from supervise.supervisor.core.clock import FakeClock
from supervise.supervisor.core.pending import PendingWindow, pending_key
from supervise.supervisor.core.run_queue import RunQueue
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run


def pending(at: datetime, now: datetime, service: str = "hook") -> Run:
    return new_run(service, at=now, nominal_time=at, origin=RunOrigin.ONESHOT, state=RunState.PENDING)


def due(at: datetime | None, now: datetime) -> Run:
    return new_run("hook", at=now, nominal_time=at, origin=RunOrigin.SCHEDULE if at else RunOrigin.MANUAL)


class FakeStorePending:
    """The store's pending rows and `pending_runs`, in (time, run id) order."""

    def __init__(self) -> None:
        self.rows: list[Run] = []

    def add(self, run: Run) -> None:
        self.rows.append(run)

    def take(self, run_id: str) -> None:
        self.rows = [r for r in self.rows if r.run_id != run_id]

    def pending_runs(self, after: tuple[datetime, str] | None, limit: int) -> list[Run]:
        ordered = sorted(self.rows, key=pending_key)
        return [r for r in ordered if after is None or pending_key(r) > after][:limit]


# -- the queue ------------------------------------------------------------------------------------


def test_the_queue_gives_runs_back_in_nominal_time_order_then_arrival() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    q = RunQueue(window=100)
    late, early, same1, same2 = (due(t0 + timedelta(seconds=s), t0) for s in (30, 10, 20, 20))
    for run in (late, early, same1, same2):
        assert q.push(run)
    assert [q.pop() for _ in range(4)] == [early, same1, same2, late]
    assert q.pop() is None


def test_a_manual_run_queues_by_when_it_became_due() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    q = RunQueue(window=10)
    manual = replace(due(None, t0), jittered_time=t0 + timedelta(seconds=5))
    scheduled = due(t0 + timedelta(seconds=9), t0)
    q.push(scheduled)
    q.push(manual)
    assert q.pop() is manual


def test_beyond_its_window_the_queue_counts_runs_left_in_the_store_and_refills() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    q = RunQueue(window=4)
    runs = [due(t0 + timedelta(seconds=i), t0) for i in range(10)]
    kept = [q.push(r) for r in runs]
    assert kept == [True] * 4 + [False] * 6
    assert (len(q), q.spilled, q.depth) == (4, 6, 10)
    assert not q.wants_refill  # the window is full
    q.pop()
    q.pop()
    assert q.wants_refill
    # The store holds the 8 still queued, soonest first (the 2 in memory among them)
    q.refill(runs[2:], total_in_store=8)
    assert (len(q), q.spilled) == (4, 4)
    assert [q.pop() for _ in range(4)] == runs[2:6]


def test_cancelling_a_queued_run_takes_only_it_out() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    q = RunQueue()
    runs = [due(t0 + timedelta(seconds=i), t0) for i in range(5)]
    for r in runs:
        q.push(r)
    assert q.remove(runs[2].run_id) is runs[2]
    assert q.remove(runs[2].run_id) is None
    assert [q.pop() for _ in range(4)] == [runs[0], runs[1], runs[3], runs[4]]


# -- the pending window ------------------------------------------------------------------------------


def test_the_window_fires_one_shots_in_time_order_as_the_clock_moves() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    window = PendingWindow(limit=100)
    runs = [pending(t0 + timedelta(milliseconds=ms), t0) for ms in (300, 100, 200, 100)]
    for run in runs:
        assert window.add(run)
    assert window.next_at == t0 + timedelta(milliseconds=100)
    clock.advance(99)
    assert window.due(clock.wall()) == []
    clock.advance(1)
    fired = window.due(clock.wall())
    assert sorted(r.run_id for r in fired) == sorted([runs[1].run_id, runs[3].run_id])
    clock.advance(500)
    assert window.due(clock.wall()) == [runs[2], runs[0]]
    assert len(window) == 0 and window.next_at is None


def test_take_hands_over_early_only_the_runs_allowed_to_go_ahead_of_their_time() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    window = PendingWindow(limit=100)
    warm = [pending(t0 + timedelta(milliseconds=ms), t0) for ms in (10, 40, 80)]
    command = pending(t0 + timedelta(milliseconds=20), t0)
    due_now = pending(t0, t0)
    for run in (*warm, command, due_now):
        window.add(run)
    taken = window.take(t0, t0 + timedelta(milliseconds=50), lambda run: run in warm)
    assert taken == [due_now, warm[0], warm[1]]  # soonest first; the command's run waits for its time
    assert window.soonest == command and len(window) == 2
    assert window.take(t0 + timedelta(milliseconds=20), t0 + timedelta(milliseconds=20), lambda run: False) == [command]
    assert window.runs() == [warm[2]]


def test_a_thousand_one_shots_through_a_window_of_ten_each_fire_once_in_order() -> None:
    # Given 1000 one-shots over the next 10 s, added in random order, and a window of 10
    clock = FakeClock()
    t0 = clock.wall()
    store = FakeStorePending()
    window = PendingWindow(limit=10)
    runs = [pending(t0 + timedelta(milliseconds=random.Random(i).randrange(1, 10_000)), t0) for i in range(1000)]
    for run in runs:
        store.add(run)
        window.add(run)
    assert len(window) == 10 and not window.complete
    # When the clock moves 1 ms at a time and the scheduler refills as the window drains
    fired: list[Run] = []
    for _ in range(10_001):
        clock.advance(1)
        for run in window.due(clock.wall()):
            store.take(run.run_id)
            fired.append(run)
        if window.wants_more:
            window.load(store.pending_runs(window.horizon, window.room), window.room)
        assert len(window) <= 10
    # Then each fired exactly once, in (time, id) order
    assert [r.run_id for r in fired] == [r.run_id for r in sorted(runs, key=pending_key)]


def test_a_one_shot_beyond_the_horizon_stays_in_the_store_only() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    window = PendingWindow(limit=3)
    early = [pending(t0 + timedelta(seconds=s), t0) for s in (1, 2, 3, 4)]
    for run in early:
        window.add(run)
    assert window.horizon == pending_key(early[2])
    assert window.add(pending(t0 + timedelta(seconds=10), t0)) is False
    sooner = pending(t0 + timedelta(milliseconds=500), t0)
    assert window.add(sooner) is True  # sooner than the horizon: in memory, the latest leaves
    assert window.runs() == [sooner, early[0], early[1]]
    assert window.horizon == pending_key(early[1])


def test_a_cancelled_one_shot_leaves_the_window() -> None:
    clock = FakeClock()
    t0 = clock.wall()
    window = PendingWindow()
    run = pending(t0 + timedelta(seconds=1), t0)
    window.add(run)
    assert window.remove(run.run_id) is run
    clock.advance(2000)
    assert window.due(clock.wall()) == []
