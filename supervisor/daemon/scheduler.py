"""The shell part of scheduling: timers, runs in flight, and the run history.

Decisions come from the pure modules (`triggers`, `policies`, `runs`); this
class reads the wall clock, arms one timer per schedule, writes every
occurrence to the store before its process is told to run, and turns worker
reports into run states. A Python service's runs go to its warm worker as "run"
messages; a command service's runs are one execution of the command each.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.core.policies import (
    OverlapAction,
    decide_catchup,
    decide_overlap,
    is_past_deadline,
    jitter_ms,
    should_retry,
)
from supervise.supervisor.daemon.processes import Worker
from supervise.supervisor.core.runs import FINAL, Run, RunOrigin, RunState, SkipReason, new_run, transition
from supervise.supervisor.config.schedule import ScheduleConfig
from supervise.supervisor.store.base import ScheduleState, StoreError
from supervise.supervisor.store.queued import QueuedStore

if TYPE_CHECKING:
    from supervise.supervisor.daemon.ports import SchedulerHost

log = logging.getLogger("supervise.scheduler")

PRUNE_EVERY_S = 3600.0
MAX_TIMER_S = 30.0  # re-read the wall clock at least this often, so clock jumps are noticed
IN_FLIGHT = frozenset({RunState.STARTING, RunState.RUNNING})
WAITING = frozenset({RunState.DUE, RunState.BUFFERED, RunState.PENDING})


@dataclass
class ActiveRun:
    run: Run
    process: Worker | None = None  # a command run's own process
    ending_as: RunState | None = None  # set by cancel or timeout: the state it will be recorded in
    launched: bool = False  # its worker was told, or its process spawned
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


@dataclass
class Schedule:
    name: str
    config: ScheduleConfig
    python: bool
    state: ScheduleState
    next_nominal: datetime | None = None
    next_at: datetime | None = None
    timer: asyncio.TimerHandle | None = None
    last_finished: datetime | None = None
    active: dict[str, ActiveRun] = field(default_factory=dict)
    buffered: collections.deque[Run] = field(default_factory=collections.deque)
    waiting_for_worker: list[str] = field(default_factory=list)
    last_run: Run | None = None  # the newest final run (not skipped) that `status` shows
    last_run_read_at: float | None = None  # monotonic time of the last read of it from the store


# `status` shows each schedule's last run: read from the store at most this often (a
# store shared with other supervisors has their runs too); runs that end here update it at once.
LAST_RUN_REFRESH_S = 5.0


class Scheduler:
    """Fires the schedules of the supervisor's scheduled services."""

    def __init__(
        self,
        host: SchedulerHost,
        store: QueuedStore,
        *,
        history_keep: int = 1000,
        history_max_age_ms: int = 30 * 86_400_000,
    ) -> None:
        self._host = host
        self._store = store
        self._history_keep = history_keep  # finished runs kept per service and outcome
        self._history_max_age = timedelta(milliseconds=history_max_age_ms)
        self._schedules: dict[str, Schedule] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prune_timer: asyncio.TimerHandle | None = None
        self._oneshot_timers: dict[str, asyncio.TimerHandle] = {}  # pending one-shots, by id

    # -- lifecycle ----------------------------------------------------------

    def add(self, name: str, config: ScheduleConfig, *, python: bool) -> None:
        state = self._store.get_schedule_state(name)
        self._schedules[name] = Schedule(name, config, python, state)

    def arm(self, name: str) -> None:
        """Arm a schedule added after `start` (a service added at runtime)."""
        self._arm(self._schedules[name])

    def remove(self, name: str) -> None:
        """Forget a schedule (its service is being removed): no more fires; runs in flight end."""
        s = self._schedules.pop(name, None)
        if s is None:
            return
        if s.timer is not None:
            s.timer.cancel()
        for active in list(s.active.values()):
            self._end_early(s, active, RunState.CANCELLED, "the service was removed")

    def start(self) -> None:
        """Recover runs lost with a previous supervisor, catch up, and arm every schedule."""
        self._loop = asyncio.get_running_loop()
        now = self._now()
        for run in self._store.runs_in_states(IN_FLIGHT | WAITING):
            if run.service not in self._schedules:
                continue
            if run.state in IN_FLIGHT:
                self._store.update_run(transition(run, RunState.LOST, at=now, reason="the supervisor stopped while it ran"))
                log.warning("%s: run %s was lost (the supervisor stopped while it ran)", run.service, run.run_id)
            else:
                self._store.update_run(transition(run, RunState.SKIPPED, at=now, reason=str(SkipReason.MISSED)))
        for s in self._schedules.values():
            if s.config.trigger.kind == "on_start":
                s.state = replace(s.state, runs_so_far=0, last_fired=None)  # once per supervisor start
            elif not s.state.paused:
                self._catch_up(s, now)
            self._arm(s)
        self._prune()

    def _prune(self) -> None:
        """Keep the history bounded; again every PRUNE_EVERY_S."""
        try:
            removed = self._store.prune(self._history_keep, self._history_max_age, self._now())
        except StoreError as e:
            log.error("pruning the run history failed (will retry): %s", e)
        else:
            if removed:  # a queued store prunes on its writer thread and logs there
                log.info("pruned %d old runs from the history", removed)
        if self._loop is not None:
            self._prune_timer = self._loop.call_later(PRUNE_EVERY_S, self._prune)

    def close(self) -> None:
        if self._prune_timer is not None:
            self._prune_timer.cancel()
        for s in self._schedules.values():
            if s.timer is not None:
                s.timer.cancel()
            for active in s.active.values():
                for handle in active.timers:
                    handle.cancel()

    def _now(self) -> datetime:
        return self._host.wall()

    # -- firing -------------------------------------------------------------

    def _catch_up(self, s: Schedule, now: datetime) -> None:
        last = s.state.last_fired
        if last is None:
            return
        missed = s.config.trigger.fires_between(last, now, 1000)
        missed = [t for t in missed if last < t <= now]
        if not missed:
            return
        decision = decide_catchup(
            missed,
            now=now,
            policy=s.config.catchup,
            window_ms=s.config.catchup_window_ms,
            max_catchup=s.config.max_catchup,
        )
        for nominal, reason in decision.skipped:
            self._record_skip(s, nominal, RunOrigin.CATCHUP, reason, now)
        for nominal in decision.run:
            self._occur(s, nominal, RunOrigin.CATCHUP)
        self._remember_fired(s, missed[-1])

    def _arm(self, s: Schedule) -> None:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.state.paused or self._loop is None:
            s.next_nominal = s.next_at = None
            return
        now = self._now()
        after = max(now, s.state.last_fired) if s.state.last_fired else now
        nominal = s.config.trigger.next_fire(
            after, runs_so_far=s.state.runs_so_far, last_finished=s.last_finished
        )
        if nominal is not None and s.state.last_fired is None and nominal < now:
            nominal = None
        s.next_nominal = nominal
        if nominal is None:
            s.next_at = None
            return
        s.next_at = nominal + timedelta(milliseconds=self._jitter(s, nominal))
        delay = min(MAX_TIMER_S, max(0.0, (s.next_at - now).total_seconds()))
        s.timer = self._loop.call_later(delay, self._on_timer, s)

    def _jitter(self, s: Schedule, nominal: datetime) -> int:
        if s.config.jitter_ms <= 0:
            return 0
        return jitter_ms(s.name, nominal, s.config.jitter_ms, None)

    def _on_timer(self, s: Schedule) -> None:
        s.timer = None
        now = self._now()
        if s.next_at is None or s.next_nominal is None or now < s.next_at:
            self._arm(s)  # woke early (the timer is capped) or the clock moved: look again
            return
        nominal = s.next_nominal
        try:
            self._remember_fired(s, nominal)
            if s.state.skip_next:
                s.state = replace(s.state, skip_next=False)
                self._store.put_schedule_state(s.name, s.state)
                self._record_skip(s, nominal, RunOrigin.SCHEDULE, SkipReason.USER_SKIP, now)
            else:
                self._occur(s, nominal, RunOrigin.SCHEDULE)
        except StoreError as e:  # a shared store unreachable: this occurrence is lost, the next ones are not
            log.error("%s: could not record the occurrence at %s: %s", s.name, nominal.isoformat(), e)
        finally:
            self._arm(s)

    def _remember_fired(self, s: Schedule, nominal: datetime) -> None:
        s.state = replace(s.state, last_fired=nominal)
        self._store.put_schedule_state(s.name, s.state)

    def _record_skip(self, s: Schedule, nominal: datetime | None, origin: RunOrigin, reason: SkipReason, now: datetime) -> Run:
        run = new_run(s.name, at=now, nominal_time=nominal, origin=origin)
        run = transition(run, RunState.SKIPPED, at=now, reason=str(reason))
        self._store.insert_run(run)
        self._host.publish(s.name, "run_skipped", {"run_id": run.run_id, "reason": str(reason)})
        return run

    # -- occurrences and runs ---------------------------------------------------

    def _occur(
        self, s: Schedule, nominal: datetime | None, origin: RunOrigin, args: Mapping[str, Any] | None = None, attempt: int = 1
    ) -> Run:
        """A new occurrence is due: start it, buffer it, or skip it, as the overlap policy says."""
        now = self._now()
        run_args = {**s.config.args, **(args or {})}
        run = new_run(s.name, at=now, nominal_time=nominal, origin=origin)
        run = replace(run, args=run_args, attempt=attempt, jittered_time=s.next_at if origin is RunOrigin.SCHEDULE else now)
        running = len(s.active) + len(s.waiting_for_worker)
        decision = decide_overlap(
            s.config.overlap,
            running=running,
            buffered=len(s.buffered),
            max_concurrent=s.config.slots,
            buffer_limit=s.config.buffer_limit,
        )
        if decision.action is OverlapAction.SKIP:
            assert decision.reason is not None
            run = transition(run, RunState.SKIPPED, at=now, reason=f"{decision.reason}: {decision.detail}")
            self._store.insert_run(run)
            self._host.publish(s.name, "run_skipped", {"run_id": run.run_id, "reason": str(decision.reason)})
            return run
        if decision.action is OverlapAction.START:
            return self._start(s, run)
        run = transition(run, RunState.BUFFERED, at=now)
        self._store.insert_run(run)
        if decision.action is OverlapAction.BUFFER:
            s.buffered.append(run)
            return run
        # cancel_other / terminate_other: stop the oldest runs; this one starts when a slot frees.
        s.buffered.appendleft(run)
        ending = RunState.CANCELLED if decision.action is OverlapAction.CANCEL_RUNNING_THEN_START else RunState.TERMINATED
        for active in sorted(s.active.values(), key=lambda a: a.run.created_at)[: decision.stop_count]:
            self._end_early(s, active, ending, f"replaced by run {run.run_id}")
        return run

    def _start(self, s: Schedule, run: Run) -> Run:
        now = self._now()
        deadline_from = run.jittered_time or run.created_at
        first_write = run.state is not RunState.BUFFERED
        if s.config.start_deadline_ms is not None and is_past_deadline(deadline_from, s.config.start_deadline_ms, now):
            run = transition(run, RunState.SKIPPED, at=now, reason=str(SkipReason.MISSED_DEADLINE))
            (self._store.insert_run if first_write else self._store.update_run)(run)
            return run
        run = transition(run, RunState.STARTING, at=now)
        active = ActiveRun(run)
        s.active[run.run_id] = active

        def launch() -> None:
            self._launch(s, run.run_id)

        # The row is committed before the process hears of the run, so a crash from here on
        # leaves a row to mark lost; the writer thread calls back once it is.
        if first_write:
            if not self._store.insert_run(run, then=self._on_loop(launch)):
                # Another supervisor sharing the store enqueued this occurrence first: it runs there.
                log.info("%s: occurrence %s is claimed by another supervisor; not running it here", s.name, run.label())
                del s.active[run.run_id]
                return run
        else:
            self._store.update_run(run, then=self._on_loop(launch))
        if run.origin is RunOrigin.SCHEDULE:
            s.state = replace(s.state, runs_so_far=s.state.runs_so_far + 1)
            self._store.put_schedule_state(s.name, s.state)
        return run

    def _on_loop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback`, to be called from another thread but run on the event loop."""
        loop = self._loop
        assert loop is not None

        def post() -> None:
            loop.call_soon_threadsafe(callback)

        return post

    def _launch(self, s: Schedule, run_id: str) -> None:
        """The run's row is committed: tell its worker, or spawn its process."""
        active = s.active.get(run_id)
        if active is None or active.ending_as is not None:
            return  # cancelled (or its worker lost) while the row was being written
        if s.config.timeout_ms is not None and self._loop is not None:
            active.timers.append(self._loop.call_later(s.config.timeout_ms / 1000, self._on_timeout, s, run_id))
        if s.python:
            if self._host.worker_ready(s.name):
                self._dispatch(s, active)
            else:
                s.waiting_for_worker.append(run_id)
        else:
            self._spawn_command(s, active)

    def _dispatch(self, s: Schedule, active: ActiveRun) -> None:
        run = active.run
        active.launched = True
        nominal = run.nominal_time.isoformat() if run.nominal_time else None
        self._host.send_run(s.name, run_id=run.run_id, args=dict(run.args), nominal_time=nominal, attempt=run.attempt)

    def _spawn_command(self, s: Schedule, active: ActiveRun) -> None:
        run = active.run
        active.launched = True
        env = {
            "SUPERVISE_RUN_ID": run.run_id,
            "SUPERVISE_SCHEDULED_TIME": run.nominal_time.isoformat() if run.nominal_time else "",
            "SUPERVISE_ATTEMPT": str(run.attempt),
            "SUPERVISE_ORIGIN": str(run.origin),
            "SUPERVISE_RUN_ARGS": json.dumps(dict(run.args)),
        }

        def exited(worker: Worker, code: int | None, sig: int | None) -> None:
            self._command_exited(s, run.run_id, code, sig)

        try:
            active.process = self._host.spawn_run_process(s.name, env, exited)
        except OSError as e:
            self._finish(s, run.run_id, ok=False, error=f"could not spawn: {e}")
            return
        self._mark_running(s, run.run_id, pid=active.process.pid)

    def _command_exited(self, s: Schedule, run_id: str, code: int | None, sig: int | None) -> None:
        ok = code == 0
        error = None if ok else (f"exited with code {code}" if code is not None else f"killed by signal {sig}")
        self._finish(s, run_id, ok=ok, error=error, exit_code=code, signal_number=sig)

    def _mark_running(self, s: Schedule, run_id: str, pid: int | None = None) -> None:
        active = s.active.get(run_id)
        if active is None or active.run.state is not RunState.STARTING:
            return
        now = self._now()
        active.run = transition(active.run, RunState.RUNNING, at=now, pid=pid)
        self._store.update_run(active.run)
        self._host.publish(s.name, "run_started", {"run_id": run_id, "attempt": active.run.attempt})

    def _finish(
        self,
        s: Schedule,
        run_id: str,
        *,
        ok: bool,
        error: str | None = None,
        result: Any = None,
        exit_code: int | None = None,
        signal_number: int | None = None,
        lost: bool = False,
    ) -> None:
        active = s.active.pop(run_id, None)
        if active is None:
            return
        for handle in active.timers:
            handle.cancel()
        if run_id in s.waiting_for_worker:
            s.waiting_for_worker.remove(run_id)
        now = self._now()
        run = active.run
        if run.state is RunState.STARTING and not lost and active.launched:
            run = transition(run, RunState.RUNNING, at=now)
        state = RunState.LOST if lost else active.ending_as or (RunState.SUCCEEDED if ok else RunState.FAILED)
        run = transition(
            run,
            state,
            at=now,
            error=error,
            result=result,
            exit_code=exit_code,
            signal=signal_number,
            reason=run.reason,
        )
        self._ended(s, run)
        s.last_finished = now
        self._host.publish(
            s.name, "run_finished", {"run_id": run_id, "state": str(state), "duration_ms": run.duration_ms, "error": error}
        )
        self._retry_if_wanted(s, run)
        self._start_buffered(s)
        if s.config.trigger.kind == "after_finish" or s.next_nominal is None:
            self._arm(s)

    def _retry_if_wanted(self, s: Schedule, run: Run) -> None:
        policy = s.config.retry
        if policy is None or self._loop is None:
            return
        delay_ms = should_retry(policy, run.state, run.attempt)
        if delay_ms is None:
            return
        log.info("%s: run %s %s; retrying in %d ms (attempt %d)", s.name, run.run_id, run.state, delay_ms, run.attempt + 1)
        self._loop.call_later(
            delay_ms / 1000, lambda: self._occur(s, run.nominal_time, RunOrigin.RETRY, run.args, run.attempt + 1)
        )

    def _start_buffered(self, s: Schedule) -> None:
        slots = s.config.slots
        while s.buffered and (slots is None or len(s.active) < slots):
            self._start(s, s.buffered.popleft())

    def _end_early(self, s: Schedule, active: ActiveRun, ending: RunState, reason: str) -> None:
        """Cancel (cooperatively, then by force after cancel_grace) or terminate a run in flight."""
        if active.ending_as is not None:
            return
        active.ending_as = ending
        active.run = replace(active.run, reason=reason)
        run_id = active.run.run_id
        if not active.launched:  # nothing runs yet: it simply ends
            self._finish(s, run_id, ok=False, error=reason)
            return
        force = ending is RunState.TERMINATED
        if s.python:
            if not force:
                self._host.send_cancel(s.name, run_id)
        elif active.process is not None:
            active.process.signal_group(signal.SIGKILL if force else signal.SIGTERM)
        if self._loop is not None:
            grace = 0.0 if force else s.config.cancel_grace_ms / 1000
            active.timers.append(self._loop.call_later(grace, self._force_end, s, run_id))

    def _force_end(self, s: Schedule, run_id: str) -> None:
        active = s.active.get(run_id)
        if active is None:
            return
        if s.python:
            # A run that ignores its cancellation can only be ended with its worker.
            log.warning("%s: run %s did not stop within cancel_grace; restarting the worker", s.name, run_id)
            self._host.restart_worker(s.name)
        elif active.process is not None:
            active.process.signal_group(signal.SIGKILL)

    def _on_timeout(self, s: Schedule, run_id: str) -> None:
        active = s.active.get(run_id)
        if active is not None:
            self._end_early(s, active, RunState.TIMED_OUT, f"timeout after {s.config.timeout_ms} ms")

    # -- what the worker channel and the supervisor tell us ----------------------

    def on_worker_message(self, name: str, kind: str, fields: Mapping[str, Any]) -> None:
        s = self._schedules.get(name)
        if s is None:
            return
        run_id = str(fields.get("run_id"))
        if kind == "run_started":
            self._mark_running(s, run_id)
        elif kind == "run_progress":
            self._host.publish(name, "run_progress", {"run_id": run_id, "progress": fields.get("progress"), "message": fields.get("message")})
        elif kind == "run_finished":
            self._finish(
                s,
                run_id,
                ok=bool(fields.get("ok")),
                error=fields.get("traceback") or fields.get("error"),
                result=fields.get("result"),
            )

    def on_worker_ready(self, name: str) -> None:
        s = self._schedules.get(name)
        if s is None:
            return
        waiting, s.waiting_for_worker = s.waiting_for_worker, []
        for run_id in waiting:
            active = s.active.get(run_id)
            if active is not None:
                self._dispatch(s, active)

    def on_worker_exit(self, name: str) -> None:
        """The service's worker is gone: its runs in flight are lost."""
        s = self._schedules.get(name)
        if s is None or not s.python:
            return
        for run_id in [r for r in s.active if r not in s.waiting_for_worker]:
            active = s.active[run_id]
            if active.ending_as is not None:
                self._finish(s, run_id, ok=False, error=active.run.reason)
            else:
                self._finish(s, run_id, ok=False, error="the worker exited during the run", lost=True)

    # -- commands -----------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self._schedules

    def _require(self, name: str) -> Schedule:
        s = self._schedules.get(name)
        if s is None:
            raise ProtocolError(ErrorCode.CONFLICT, f'service "{name}" has no schedule (add every, cron, at or manual)')
        return s

    def run_now(self, name: str, args: Mapping[str, Any] | None) -> Run:
        return self._occur(self._require(name), None, RunOrigin.MANUAL, args)

    def cancel(self, run_id: str) -> Run:
        for s in self._schedules.values():
            active = s.active.get(run_id)
            if active is not None:
                self._end_early(s, active, RunState.CANCELLED, "cancelled by request")
                return active.run
            for run in s.buffered:
                if run.run_id == run_id:
                    s.buffered.remove(run)
                    run = transition(run, RunState.CANCELLED, at=self._now(), reason="cancelled by request")
                    self._ended(s, run)
                    return run
        run = self._store.get_run(run_id)
        if run is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f'no run with id "{run_id}"')
        raise ProtocolError(ErrorCode.CONFLICT, f"run {run_id} is already {run.state}; nothing to cancel")

    def pause(self, name: str) -> None:
        s = self._require(name)
        s.state = replace(s.state, paused=True)
        self._store.put_schedule_state(name, s.state)
        self._arm(s)

    def resume(self, name: str) -> None:
        s = self._require(name)
        # Times missed while paused are not run (resume: skip_missed): fire from now on.
        s.state = replace(s.state, paused=False, last_fired=self._now())
        self._store.put_schedule_state(name, s.state)
        self._arm(s)

    def skip_next(self, name: str) -> str | None:
        s = self._require(name)
        s.state = replace(s.state, skip_next=True)
        self._store.put_schedule_state(name, s.state)
        return s.next_nominal.isoformat() if s.next_nominal else None

    def next_fires(self, name: str, count: int) -> list[str]:
        s = self._require(name)
        times: list[str] = []
        after = max(self._now(), s.state.last_fired) if s.state.last_fired else self._now()
        runs = s.state.runs_so_far
        for _ in range(count):
            nxt = s.config.trigger.next_fire(after, runs_so_far=runs, last_finished=s.last_finished)
            if nxt is None:
                break
            times.append(nxt.isoformat())
            after, runs = nxt, runs + 1
        return times

    def schedule_at(self, name: str, at: datetime, args: Mapping[str, Any] | None) -> str:
        """A one-shot occurrence at `at`, persisted; fires through its own timer."""
        s = self._require(name)
        oneshot_id = self._store.add_oneshot(name, at, dict(args or {}))
        self._arm_oneshot(s, oneshot_id, at, args)
        return oneshot_id

    def _arm_oneshot(self, s: Schedule, oneshot_id: str, at: datetime, args: Mapping[str, Any] | None) -> None:
        assert self._loop is not None

        def fire() -> None:
            now = self._now()
            if now < at:
                self._oneshot_timers[oneshot_id] = self._loop.call_later(  # type: ignore[union-attr]
                    min(MAX_TIMER_S, (at - now).total_seconds()), fire
                )
                return
            self._oneshot_timers.pop(oneshot_id, None)
            self._store.remove_oneshot(oneshot_id)
            self._occur(s, at, RunOrigin.SCHEDULE, args)

        delay = min(MAX_TIMER_S, max(0.0, (at - self._now()).total_seconds()))
        self._oneshot_timers[oneshot_id] = self._loop.call_later(delay, fire)

    def cancel_oneshot(self, oneshot_id: str) -> bool:
        """Drop a one-shot occurrence that has not fired; False when it has (or never existed)."""
        timer = self._oneshot_timers.pop(oneshot_id, None)
        if timer is None:
            return False
        timer.cancel()
        self._store.remove_oneshot(oneshot_id)
        return True

    def arm_stored_oneshots(self) -> None:
        for oneshot in self._store.list_oneshots():
            s = self._schedules.get(oneshot.service)
            if s is not None:
                self._arm_oneshot(s, oneshot.id, oneshot.at, oneshot.args)

    def backfill(self, name: str, start: datetime, end: datetime, limit: int = 1000) -> list[str]:
        s = self._require(name)
        ids = []
        for nominal in s.config.trigger.fires_between(start, end, limit):
            run = new_run(s.name, at=self._now(), nominal_time=nominal, origin=RunOrigin.BACKFILL)
            run = transition(replace(run, args=dict(s.config.args)), RunState.BUFFERED, at=self._now())
            if self._store.insert_run(run):
                s.buffered.append(run)
                ids.append(run.run_id)
        self._start_buffered(s)
        return ids

    def _last_run(self, s: Schedule) -> Run | None:
        now = time.monotonic()
        if s.last_run_read_at is None or now - s.last_run_read_at > LAST_RUN_REFRESH_S:
            found = self._store.list_runs(s.name, states=set(FINAL) - {RunState.SKIPPED}, limit=1)
            s.last_run_read_at = now
            if found:
                s.last_run = _newer(s.last_run, found[0])
        return s.last_run

    def _ended(self, s: Schedule, run: Run) -> None:
        """A run of `s` reached a final state here: store it, and show it in `status` at once."""
        self._store.update_run(run)
        if run.state is not RunState.SKIPPED:
            s.last_run = _newer(s.last_run, run)

    def describe(self, name: str) -> dict[str, object] | None:
        s = self._schedules.get(name)
        if s is None:
            return None
        last = self._last_run(s)
        return {
            "trigger": s.config.trigger.describe(),
            "paused": s.state.paused,
            "next_fire": s.next_at.isoformat() if s.next_at else None,
            "running": len(s.active),
            "buffered": len(s.buffered),
            "runs_so_far": s.state.runs_so_far,
            "last_run": _run_summary(last) if last is not None else None,
        }


def _newer(cached: Run | None, other: Run) -> Run:
    """The later-created of two final runs (the store's order); the same run: the copy kept here."""
    if cached is None:
        return other
    if cached.run_id == other.run_id:
        return cached
    return other if (other.created_at, other.run_id) > (cached.created_at, cached.run_id) else cached


def _run_summary(run: Run) -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "state": str(run.state),
        "nominal_time": run.nominal_time.isoformat() if run.nominal_time else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_ms": run.duration_ms,
        "error": (run.error or "").strip().splitlines()[-1] if run.error else None,
    }


def run_to_dict(run: Run) -> dict[str, object]:
    """A run as the control protocol returns it."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "run_id": run.run_id,
        "service": run.service,
        "state": str(run.state),
        "reason": run.reason,
        "origin": str(run.origin),
        "attempt": run.attempt,
        "nominal_time": iso(run.nominal_time),
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_ms": run.duration_ms,
        "args": dict(run.args),
        "pid": run.pid,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "error": run.error,
        "result": run.result,
    }
