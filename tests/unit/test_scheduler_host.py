"""The scheduler in process, behind its port: a fake host, the fake clock, a real SQLite store.

No supervisor, no worker processes: what the scheduler asks of its host
(`send_run`, `send_cancel`, events) is recorded, and worker reports are fed
back as the worker channel would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervise.supervisor.config.loader import parse_service
from supervise.supervisor.core.clock import FakeClock
from supervise.supervisor.core.pending import PendingWindow
from supervise.supervisor.core.runs import RunState
from supervise.supervisor.daemon.ports import ExitCallback, SchedulerHost
from supervise.supervisor.daemon.processes import Worker
from supervise.supervisor.daemon.scheduler import Scheduler
from supervise.supervisor.daemon.schedules import FIRE_AHEAD_S
from supervise.supervisor.store.queued import QueuedStore
from supervise.supervisor.store.sqlite import SqliteStore

WALL0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeHost:
    """Records what the scheduler asks for; its worker is ready unless told otherwise."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ready = True
        self.sent: list[dict[str, object]] = []
        self.cancels: list[str] = []
        self.events: list[tuple[str, str, dict[str, object]]] = []
        self.restarts: list[str] = []

    def wall(self) -> datetime:
        return self.clock.wall()

    def publish(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        self.events.append((service, kind, dict(detail)))

    def notice(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        pass  # no notifier here

    def worker_ready(self, name: str) -> bool:
        return self.ready

    def send_run(self, name: str, **fields: object) -> None:
        self.sent.append({"service": name, **fields})

    def send_cancel(self, name: str, run_id: str) -> None:
        self.cancels.append(run_id)

    def expand(self, name: str) -> list[str]:
        return [name]

    def kill_worker(self, name: str, reason: str) -> None:
        self.restarts.append(name)

    def spawn_run_process(
        self, name: str, env: Mapping[str, str], on_exit: ExitCallback, *, fence_until: float | None = None
    ) -> Worker:
        raise OSError("no processes in this test")


def _host_conforms(host: FakeHost) -> SchedulerHost:
    return host  # mypy checks the fake against the port


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[FakeClock, FakeHost, QueuedStore]]:
    clock = FakeClock(wall=WALL0)
    store = QueuedStore(SqliteStore(tmp_path / "history.db").open(), shared=False)
    try:
        yield clock, FakeHost(clock), store
    finally:
        store.close()


def scheduler_with(host: FakeHost, store: QueuedStore, table: Mapping[str, object], name: str = "job") -> Scheduler:
    cfg = parse_service(name, table, base_dir=Path.cwd())
    assert cfg.schedule is not None
    scheduler = Scheduler(_host_conforms(host), store)
    scheduler.add(name, cfg.schedule, python=True)
    return scheduler


def test_next_fires_follow_the_hosts_clock(parts: tuple[FakeClock, FakeHost, QueuedStore]) -> None:
    clock, host, store = parts

    async def scenario() -> list[str]:
        scheduler = scheduler_with(host, store, {"target": "m:f", "every": "1h", "start": "2026-03-01T00:00:00+00:00"})
        scheduler.start()
        first = scheduler.next_fires("job", 2)
        clock.advance(3_600_000)
        later = scheduler.next_fires("job", 1)
        scheduler.close()
        return [*first, *later]

    fires = asyncio.run(scenario())
    assert [datetime.fromisoformat(f) for f in fires] == [
        WALL0 + timedelta(hours=1),
        WALL0 + timedelta(hours=2),
        WALL0 + timedelta(hours=2),
    ]


def test_a_run_goes_to_the_ready_worker_and_its_reports_end_it(parts: tuple[FakeClock, FakeHost, QueuedStore]) -> None:
    clock, host, store = parts

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "manual": True})
        scheduler.start()
        run = scheduler.run_now("job", {"region": "eu"})
        await until(lambda: len(host.sent) == 1, "the run to be sent")
        assert host.sent[0]["run_id"] == run.run_id and host.sent[0]["args"] == {"region": "eu"}
        clock.advance(250)
        scheduler.on_worker_message("job", "run_started", {"run_id": run.run_id})
        clock.advance(1_000)
        scheduler.on_worker_message("job", "run_finished", {"run_id": run.run_id, "ok": True, "result": 42})
        await until(lambda: store.store.get_run(run.run_id).state is RunState.SUCCEEDED, "the run to be recorded")
        stored = store.store.get_run(run.run_id)
        assert stored.result == 42 and stored.duration_ms == 1_000
        scheduler.close()

    asyncio.run(scenario())
    kinds = [kind for _, kind, _ in host.events]
    assert kinds == ["run_started", "run_finished"]


def test_runs_wait_for_the_worker_and_a_cancel_reaches_it(parts: tuple[FakeClock, FakeHost, QueuedStore]) -> None:
    clock, host, store = parts
    host.ready = False

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "manual": True})
        scheduler.start()
        run = scheduler.run_now("job", None)
        waiting = scheduler._schedules["job"].waiting_for_worker  # the launched run, held for the worker
        await until(lambda: run.run_id in waiting, "the run to wait for the worker")
        assert host.sent == []  # no worker yet: nothing was sent
        host.ready = True
        scheduler.on_worker_ready("job")
        await until(lambda: len(host.sent) == 1, "the waiting run to be sent once the worker is ready")
        scheduler.on_worker_message("job", "run_started", {"run_id": run.run_id})
        scheduler.cancel(run.run_id)
        assert host.cancels == [run.run_id]
        scheduler.on_worker_message("job", "run_finished", {"run_id": run.run_id, "ok": False, "error": "cancelled"})
        await until(lambda: store.store.get_run(run.run_id).state is RunState.CANCELLED, "the cancelled run")
        scheduler.close()

    asyncio.run(scenario())


def test_a_one_shot_for_a_warm_worker_is_handed_over_ahead_of_its_time_with_not_before(
    parts: tuple[FakeClock, FakeHost, QueuedStore],
) -> None:
    """The supervisor's work happens before the run's time; the worker starts it at `not_before`."""
    _, host, store = parts
    due = WALL0 + timedelta(seconds=FIRE_AHEAD_S / 2)

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "manual": True})
        scheduler.start()
        run_id = scheduler.schedule_at("job", due, {"n": 1})
        # The host's wall clock stands still before `due`: only a hand-over ahead of time sends it.
        await until(lambda: len(host.sent) == 1, "the one-shot to be handed over ahead of its time")
        assert host.sent[0]["run_id"] == run_id and host.sent[0]["not_before"] == due.timestamp()
        scheduler.close()

    asyncio.run(scenario())


def test_an_occurrence_is_fired_ahead_only_when_nothing_of_its_schedule_still_runs(
    parts: tuple[FakeClock, FakeHost, QueuedStore],
) -> None:
    """Ahead of time the overlap policy cannot know whether the last run ends in time: a busy
    schedule's occurrence waits for its own time, and then the policy decides."""
    clock, host, store = parts
    clock.advance(1_000 - int(FIRE_AHEAD_S * 1000) // 2)  # inside the fire-ahead window of WALL0 + 1 s

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "every": "1s", "start": WALL0.isoformat()})
        scheduler.start()
        await until(lambda: len(host.sent) == 1, "the idle schedule's occurrence, ahead of its time")
        first = host.sent[0]
        assert first["not_before"] == (WALL0 + timedelta(seconds=1)).timestamp()
        scheduler.on_worker_message("job", "run_started", {"run_id": first["run_id"]})
        clock.advance(1_000)  # inside the window of WALL0 + 2 s, and the first run still runs
        s = scheduler._schedules["job"]
        scheduler._firing.arm(s)
        early = s.timer
        # The early timer fires, sees the run in flight and arms another for the exact time.
        await until(lambda: s.timer is not early and s.timer is not None, "the early timer to hold back")
        assert list(s.active) == [first["run_id"]] and len(host.sent) == 1  # no second run was started
        clock.advance(int(FIRE_AHEAD_S * 1000))  # the occurrence's own time: overlap "skip" decides
        await until(
            lambda: any(kind == "run_skipped" for _, kind, _ in host.events), "the busy occurrence to be skipped"
        )
        assert len(host.sent) == 1
        clock.advance(1_000 - int(FIRE_AHEAD_S * 1000))  # inside the window of WALL0 + 3 s; the run still runs
        scheduler._firing.arm(s)
        early = s.timer
        await until(lambda: s.timer is not early and s.timer is not None, "the early timer to hold back again")
        scheduler.on_worker_message("job", "run_finished", {"run_id": first["run_id"], "ok": True})  # ends in time
        clock.advance(int(FIRE_AHEAD_S * 1000))
        await until(lambda: len(host.sent) == 2, "the occurrence to start: nothing runs at its own time")
        assert sum(kind == "run_skipped" for _, kind, _ in host.events) == 1
        scheduler.close()

    asyncio.run(scenario())


def test_the_pending_window_refills_while_the_writer_is_busy_with_other_writes(
    parts: tuple[FakeClock, FakeHost, QueuedStore],
) -> None:
    """A burst keeps the writer busy with state changes; the window must not wait for it to be
    idle before reading the next pending runs, only for writes of pending rows themselves."""
    _, host, store = parts
    count = PendingWindow().limit + 100

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"action": "http", "url": "http://127.0.0.1:9/x", "manual": True})
        scheduler.start()
        for _ in range(count):
            scheduler.schedule_at("job", WALL0, None)
        assert await scheduler.written()
        s = scheduler._schedules["job"]
        with store.store._lock:  # the writer stalls on the runs' state changes from here on
            scheduler._oneshots.arm()
            await until(lambda: len(s.active) + s.queue.depth == count, "every pending run, the store's too, to fire")
            assert store.pending > 0


def test_runs_left_in_flight_by_a_service_added_at_runtime_are_lost_once_it_is_restored(
    parts: tuple[FakeClock, FakeHost, QueuedStore],
) -> None:
    from supervise.supervisor.core.runs import RunOrigin, new_run, transition

    clock, host, store = parts
    # Given: a stopped supervisor left a run of a runtime-added service `later` running
    shot = new_run("later", at=WALL0, nominal_time=WALL0, origin=RunOrigin.ONESHOT)
    left = transition(shot, RunState.STARTING, at=WALL0)
    store.store.insert_run(left)

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "manual": True})  # the config's service only
        scheduler.start()
        await store.written()
        assert store.store.get_run(left.run_id).state is RunState.STARTING  # not this schedule's yet
        cfg = parse_service("later", {"target": "m:f", "manual": True}, base_dir=Path.cwd())
        assert cfg.schedule is not None
        scheduler.add("later", cfg.schedule, python=True)  # its registration is restored
        scheduler.arm("later")
        await until(lambda: store.store.get_run(left.run_id).state is RunState.LOST, "the run to be recorded lost")
        scheduler.close()

    asyncio.run(scenario())


def test_a_one_shot_added_a_moment_ago_is_cancelled_before_its_row_reaches_the_store(
    parts: tuple[FakeClock, FakeHost, QueuedStore],
) -> None:
    _, host, store = parts

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "manual": True})
        scheduler.start()
        with store.store._lock:  # the writer stalls: the run's row is not in the store yet
            run_id = scheduler.schedule_at("job", WALL0 + timedelta(hours=1), None)
            assert scheduler.cancel_oneshot(run_id)
        assert await scheduler.written()
        assert store.store.get_run(run_id).state is RunState.CANCELLED
        scheduler.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("latest", {1: "skipped superseded", 2: "skipped superseded", 3: "run"}),
        ("all", {1: "run", 2: "run", 3: "run"}),
    ],
)
def test_a_timer_woken_after_several_of_its_times_decides_each_by_the_catchup_policy(
    parts: tuple[FakeClock, FakeHost, QueuedStore], catchup: str, expected: dict[int, str]
) -> None:
    """An event loop held up for longer than the period: every time it slept through gets a run
    or a `skipped` row with its reason, and the schedule goes on from the next time."""
    clock, host, store = parts

    async def scenario() -> None:
        table = {"target": "m:f", "every": "1s", "start": WALL0.isoformat(), "catchup": catchup, "overlap": "allow_all"}
        scheduler = scheduler_with(host, store, table)
        scheduler.start()
        s = scheduler._schedules["job"]
        assert s.timer is not None and s.next_nominal == WALL0 + timedelta(seconds=1)
        s.timer.cancel()
        clock.advance(3_500)  # the loop wakes 2.5 s after the time it was armed for
        scheduler._firing._on_timer(s)
        assert await scheduler.written()
        runs = store.store.list_runs("job")
        outcome = {
            int((r.nominal_time - WALL0).total_seconds()): "run"
            if r.state is not RunState.SKIPPED
            else f"skipped {r.reason}"
            for r in runs
            if r.nominal_time is not None
        }
        assert outcome == expected
        assert s.next_nominal == WALL0 + timedelta(seconds=4)
        scheduler.close()

    asyncio.run(scenario())


def test_a_removed_schedule_is_not_armed_again_by_a_run_that_ends_after_its_removal(
    parts: tuple[FakeClock, FakeHost, QueuedStore],
) -> None:
    _, host, store = parts

    async def scenario() -> None:
        scheduler = scheduler_with(host, store, {"target": "m:f", "every": "1h", "after_finish": True})
        scheduler.start()
        removed = scheduler._schedules["job"]
        scheduler.run_now("job", None)  # its row not written yet: removing the service ends it at once
        scheduler.remove("job")
        assert removed.timer is None  # no occurrence of a service that is gone (or replaced by an update)
        scheduler.close()

    asyncio.run(scenario())
