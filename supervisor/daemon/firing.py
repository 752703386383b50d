"""The schedules' timers: each occurrence fired at its time, the times missed decided by the catch-up policy.

One timer per schedule, armed for its next fire time (plus deterministic jitter;
`FIRE_AHEAD_S` early for a warm worker's), capped at MAX_TIMER_S so that a
clock jump is noticed. A timer woken after several of its times, or a supervisor
started after some, hands them to the catch-up policy: each time gets a run or a
`skipped` row with its reason. Pause, resume and skip-next act on the timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.core.policies import decide_catchup, jitter_ms
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, SkipReason, new_run, transition
from supervise.supervisor.daemon.ports import SchedulerHost
from supervise.supervisor.daemon.run_dispatch import RunDispatcher
from supervise.supervisor.daemon.schedules import FIRE_AHEAD_S, MAX_TIMER_S, Schedule
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.queued import QueuedStore

log = logging.getLogger("supervise.scheduler")

SKIPPED_LOOKED_AT = 50  # a skip refused as a duplicate: the latest skipped rows searched for the same occurrence
OCCURRENCE_RETRIES = 6  # cluster mode: an occurrence the store refused is tried again 6 times (0.5 s .. 16 s)
OCCURRENCE_RETRY_S = 0.5


class Firing:
    """Fires the occurrences of the scheduler's schedules at their times.

    Args:
        host: the daemon (the wall clock, events).
        store: the run history and the schedules' stored state.
        runs: what an occurrence becomes (started, queued, buffered, skipped).
        schedules: the scheduler's schedules by service (read here, never changed).
        clustered: cluster mode: an occurrence the store refused is tried again.
    """

    def __init__(
        self,
        host: SchedulerHost,
        store: QueuedStore,
        runs: RunDispatcher,
        schedules: Mapping[str, Schedule],
        *,
        clustered: bool,
    ) -> None:
        self._host = host
        self._store = store
        self._runs = runs
        self._schedules = schedules
        self._clustered = clustered
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Timers may be armed from now on (the scheduler has started)."""
        self._loop = loop

    def close(self) -> None:
        """Cancel every schedule's timer."""
        for s in self._schedules.values():
            if s.timer is not None:
                s.timer.cancel()

    def _now(self) -> datetime:
        return self._host.wall()

    def catch_up(self, s: Schedule, now: datetime) -> None:
        """Decide the times `s` missed since it last fired (the supervisor was down) by its catch-up policy."""
        last = s.state.last_fired
        if last is not None:
            self._decide_missed(s, self._due_after(s, last, now), now)

    def _due_after(self, s: Schedule, after: datetime, now: datetime) -> list[datetime]:
        """The schedule's times in (after, now]."""
        return [t for t in s.config.trigger.fires_between(after, now, 1000) if after < t <= now]

    def _decide_missed(self, s: Schedule, missed: list[datetime], now: datetime) -> None:
        """Times that passed without firing: the catch-up policy runs some and records the rest skipped."""
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
            self._runs.occur(s, nominal, RunOrigin.CATCHUP)
        self._remember_fired(s, missed[-1])

    def arm(self, s: Schedule) -> None:
        """(Re-)arm the timer of `s` for its next fire time (none while paused or before `start`)."""
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if self._schedules.get(s.name) is not s:
            return  # removed, or replaced by an update: a run of it that ends now must not arm it again
        if s.state.paused or self._loop is None:
            s.next_nominal = s.next_at = None
            return
        now = self._now()
        after = max(now, s.state.last_fired) if s.state.last_fired else now
        nominal = s.config.trigger.next_fire(after, runs_so_far=s.state.runs_so_far, last_finished=s.last_finished)
        if nominal is not None and s.state.last_fired is None and nominal < now:
            nominal = None
        s.next_nominal = nominal
        if nominal is None:
            s.next_at = None
            return
        s.next_at = nominal + timedelta(milliseconds=self._jitter(s, nominal))
        ahead = FIRE_AHEAD_S if s.python else 0.0
        delay = min(MAX_TIMER_S, max(0.0, (s.next_at - now).total_seconds() - ahead))
        s.timer = self._loop.call_later(delay, self._on_timer, s)

    def _jitter(self, s: Schedule, nominal: datetime) -> int:
        if s.config.jitter_ms <= 0:
            return 0
        return jitter_ms(s.name, nominal, s.config.jitter_ms, None)

    def _on_timer(self, s: Schedule) -> None:
        s.timer = None
        if self._schedules.get(s.name) is not s:
            return  # its service was removed or replaced since this timer was armed
        now = self._now()
        early = FIRE_AHEAD_S if s.python else 0.0
        if s.next_at is None or s.next_nominal is None or now < s.next_at - timedelta(seconds=early):
            self.arm(s)  # woke early (the timer is capped) or the clock moved: look again
            return
        if now < s.next_at and (s.active or s.queue.depth or s.buffered):
            # Ahead of time, but the overlap policy must see what is still running at the time itself.
            assert self._loop is not None
            s.timer = self._loop.call_later((s.next_at - now).total_seconds(), self._on_timer, s)
            return
        nominal = s.next_nominal
        # Woken after later times too (a starved event loop, a suspended host): those were
        # missed, and the catch-up policy decides them as after a restart, so each time gets a
        # row; in cluster mode each row is unique per time, whichever node writes it first.
        overdue = self._due_after(s, nominal, now) if now > nominal else []
        try:
            if s.state.skip_next:
                self._remember_fired(s, nominal)
                s.state = replace(s.state, skip_next=False)
                self._store.put_schedule_state(s.name, s.state)
                self._record_skip(s, nominal, RunOrigin.SCHEDULE, SkipReason.USER_SKIP, now)
                self._decide_missed(s, overdue, now)
            elif overdue:
                self._decide_missed(s, [nominal, *overdue], now)
            else:
                self._remember_fired(s, nominal)
                self._runs.occur(s, nominal, RunOrigin.SCHEDULE)
        except StoreError as e:
            if self._clustered:  # cluster mode: try again; whichever node gets through inserts it once
                self._retry_occurrence(s, nominal, 1, e)
            else:  # a shared store unreachable: this occurrence is lost, the next ones are not
                log.error("%s: could not record the occurrence at %s: %s", s.name, nominal.isoformat(), e)
        finally:
            self.arm(s)

    def _retry_occurrence(self, s: Schedule, nominal: datetime, tries: int, error: StoreError) -> None:
        """Cluster mode: the store was unreachable when `nominal` fired; insert it again in
        OCCURRENCE_RETRY_S, doubling, OCCURRENCE_RETRIES times (the occurrence is unique, so a
        node that got through first makes this a no-op)."""
        if tries > OCCURRENCE_RETRIES or self._loop is None or s.name not in self._schedules:
            log.error("%s: could not record the occurrence at %s: %s; given up", s.name, nominal.isoformat(), error)
            return
        log.warning("%s: could not record the occurrence at %s (%s); trying again", s.name, nominal.isoformat(), error)

        def again() -> None:
            try:
                self._runs.occur(s, nominal, RunOrigin.SCHEDULE)
            except StoreError as e:
                self._retry_occurrence(s, nominal, tries + 1, e)

        self._loop.call_later(OCCURRENCE_RETRY_S * 2 ** (tries - 1), again)

    def _remember_fired(self, s: Schedule, nominal: datetime) -> None:
        s.state = replace(s.state, last_fired=nominal)
        self._store.put_schedule_state(s.name, s.state)

    def _record_skip(
        self, s: Schedule, nominal: datetime | None, origin: RunOrigin, reason: SkipReason, now: datetime
    ) -> Run:
        run = new_run(s.name, at=now, nominal_time=nominal, origin=origin)
        run = transition(run, RunState.SKIPPED, at=now, reason=str(reason))
        detail = {"run_id": run.run_id, "reason": str(reason)}
        if not self._store.shared or self._loop is None:
            with self._store.together():
                if self._store.insert_run(run):
                    self._host.publish(s.name, "run_skipped", detail)
            return run
        # On a shared store another supervisor may have recorded this occurrence first: the row,
        # its notifications and its event are the winner's (docs/notifications.md).
        with self._store.together():
            self._store.insert_first(
                run, won=self._runs.on_loop(lambda: self._host.publish(s.name, "run_skipped", detail))
            )
            self._host.notice(s.name, "run_skipped", detail)
        return run

    def pause(self, s: Schedule) -> None:
        """No more fires of `s` until `resume`."""
        s.state = replace(s.state, paused=True)
        self._store.put_schedule_state(s.name, s.state)
        self.arm(s)

    def resume(self, s: Schedule) -> None:
        """Fire `s` again. Times missed while paused are not run (resume: skip_missed): fire from now on."""
        s.state = replace(s.state, paused=False, last_fired=self._now())
        self._store.put_schedule_state(s.name, s.state)
        self.arm(s)

    def skip_next(self, s: Schedule) -> str | None:
        """Skip the next occurrence of `s`; its time, if it has one."""
        if self._store.shared and s.next_nominal is not None:
            return self._skip_shared(s, s.next_nominal)
        s.state = replace(s.state, skip_next=True)
        self._store.put_schedule_state(s.name, s.state)
        return s.next_nominal.isoformat() if s.next_nominal else None

    def _skip_shared(self, s: Schedule, nominal: datetime) -> str:
        """On a shared store (cluster mode): the occurrence is recorded `skipped` now, under its
        unique key, so whichever supervisor fires it finds it taken and does not run it."""
        now = self._now()
        run = transition(
            new_run(s.name, at=now, nominal_time=nominal, origin=RunOrigin.SCHEDULE),
            RunState.SKIPPED,
            at=now,
            reason=str(SkipReason.USER_SKIP),
        )
        if self._store.insert_run(run):
            self._host.publish(s.name, "run_skipped", {"run_id": run.run_id, "reason": str(SkipReason.USER_SKIP)})
            return nominal.isoformat()
        skipped = self._store.list_runs(s.name, states={RunState.SKIPPED}, limit=SKIPPED_LOOKED_AT)
        if any(r.nominal_time == nominal and r.reason == str(SkipReason.USER_SKIP) for r in skipped):
            return nominal.isoformat()  # skipped already (through this node or another)
        raise ProtocolError(
            ErrorCode.CONFLICT,
            f"skip: the occurrence of {s.name} at {nominal.isoformat()} is already recorded (fired by a supervisor "
            "sharing the store); nothing skipped",
        )
