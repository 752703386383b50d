"""Runs from their occurrence to their final state: admitted, queued, started, ended.

An occurrence is started, queued, buffered or skipped as the overlap policy says;
a started run's row is committed before its process hears of it; a Python
service's runs go to its warm workers as "run" messages (the one with the fewest
in flight), a command service's runs are one execution of the command each. What
the worker channel reports turns into run states; cancel, timeout and retries
end or repeat them. Runs lost with their worker are `lost_runs.py`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from supervise.protocol import worker_env as E
from supervise.supervisor.core.lateness import LatenessHistogram
from supervise.supervisor.core.policies import OverlapAction, decide_overlap, is_past_deadline, should_retry
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, SkipReason, new_run, transition
from supervise.supervisor.daemon.loop_posts import LoopPosts
from supervise.supervisor.daemon.lost_runs import LostRuns
from supervise.supervisor.daemon.ports import SchedulerHost
from supervise.supervisor.daemon.processes import Worker
from supervise.supervisor.daemon.run_leases import RunLeases
from supervise.supervisor.daemon.run_views import newer
from supervise.supervisor.daemon.schedules import REFILL_RETRY_S, ActiveRun, Schedule, due_time, pop_active
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.queued import QueuedStore

log = logging.getLogger("supervise.scheduler")


class RunDispatcher:
    """Starts, hands out, ends and retries the runs of the scheduler's schedules.

    Args:
        host: the daemon (the wall clock, events, warm workers, one-process runs).
        store: the run history.
        schedules: the scheduler's schedules by service (read here, never changed).
        leases: cluster mode: the node's run leases.
        lost: what becomes of runs lost with their worker.
        rearm: re-arm a schedule's timer (a run of an after-finish schedule ended).
        room_freed: a schedule has a free slot and no queue (cluster mode claims due one-shots).
    """

    def __init__(
        self,
        host: SchedulerHost,
        store: QueuedStore,
        schedules: Mapping[str, Schedule],
        *,
        leases: RunLeases | None,
        lost: LostRuns,
        rearm: Callable[[Schedule], None],
        room_freed: Callable[[str], None],
    ) -> None:
        self._host = host
        self._store = store
        self._schedules = schedules
        self._leases = leases
        self._lost = lost
        self._rearm = rearm
        self._room_freed = room_freed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._posts: LoopPosts | None = None  # callbacks from the writer thread, run on the loop
        self._refill_timer: asyncio.Handle | None = None
        self.lateness: dict[str, LatenessHistogram] = {}  # per service: how late its runs started

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs may be launched from now on (the scheduler has started)."""
        self._loop = loop
        self._posts = LoopPosts(loop)

    def close(self) -> None:
        """Cancel the refill and every run's timers (the runs themselves are the workers' to end)."""
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        for s in self._schedules.values():
            for active in s.active.values():
                for handle in active.timers:
                    handle.cancel()

    def now(self) -> datetime:
        """The wall clock."""
        return self._host.wall()

    # -- what the pending one-shots ask (`OneshotHost`) ------------------------------

    def has(self, service: str) -> bool:
        """`service` has a schedule."""
        return service in self._schedules

    def fires_ahead(self, service: str) -> bool:
        """The service's runs go to warm workers: a pending run may be handed over early."""
        s = self._schedules.get(service)
        return s is not None and s.python

    def room(self, service: str) -> int:
        """Cluster mode: free slots of `service` for due one-shots (none while it has a queue)."""
        s = self._schedules.get(service)
        return 0 if s is None or s.queue.depth else max(0, self.capacity(s) - len(s.active))

    def admit(self, run: Run) -> None:
        """A due stored run of a service that has a schedule: start it if a slot is free, else queue it."""
        self._admit(self._schedules[run.service], run, stored=True)

    def start_claimed(self, run: Run) -> None:
        """Cluster mode: start a due one-shot this node claimed (`DueClaims`), or, when its slots
        filled meanwhile, queue it for any node (the write gives the lease back)."""
        s = self._schedules.get(run.service)
        try:
            if s is None:
                self._store.store.update_run(run)  # back to pending, for when the service is back
            elif self.room(s.name) > 0:
                assert self._leases is not None
                self._leases.claimed(run.run_id)
                self._start(s, run, stored=True)
                self._leases.unclaimed(run.run_id)
            else:
                self._admit(s, run, stored=True)
        except StoreError as e:
            log.error("%s: could not start one-shot run %s: %s", run.service, run.run_id, e)

    # -- occurrences -------------------------------------------------------------------

    def occur(
        self,
        s: Schedule,
        nominal: datetime | None,
        origin: RunOrigin,
        args: Mapping[str, Any] | None = None,
        attempt: int = 1,
        key: str | None = None,
    ) -> Run:
        """A new occurrence is due: start it, queue it, buffer it, or skip it, as the overlap policy says."""
        now = self.now()
        run_args = {**s.config.args, **(args or {})}
        run = new_run(s.name, at=now, nominal_time=nominal, origin=origin)
        run = replace(
            run,
            args=run_args,
            attempt=attempt,
            key=key,
            jittered_time=s.next_at if origin is RunOrigin.SCHEDULE else now,
        )
        running = len(s.active) + s.queue.depth
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
            return self._admit(s, run, stored=False)
        run = transition(run, RunState.BUFFERED, at=now)
        self._store.insert_run(run)
        if decision.action is OverlapAction.BUFFER:
            s.buffered.append(run)
            return run
        # cancel_other / terminate_other: stop the oldest runs; this one starts when a slot frees.
        s.buffered.appendleft(run)
        ending = (
            RunState.CANCELLED if decision.action is OverlapAction.CANCEL_RUNNING_THEN_START else RunState.TERMINATED
        )
        for active in sorted(s.active.values(), key=lambda a: a.run.created_at)[: decision.stop_count]:
            self.end_early(s, active, ending, f"replaced by run {run.run_id}")
        return run

    def _admit(self, s: Schedule, run: Run, *, stored: bool) -> Run:
        """An occurrence the overlap policy lets run: start it if a slot is free, else queue it."""
        if len(s.active) < self.capacity(s) and not s.queue.depth:
            return self._start(s, run, stored=stored)
        run = transition(run, RunState.QUEUED, at=self.now())
        if stored and self._leases is not None:
            # Written now, not queued: a claim of this run (here, soon, or by another node)
            # must come after it, or the queued write would undo the claim.
            self._store.store.update_run(run)
        else:
            (self._store.update_run if stored else self._store.insert_run)(run)
        s.queue.push(run)
        self.drain(s)
        return run

    def drain(self, s: Schedule) -> None:
        """Start queued runs, soonest first, while slots are free."""
        if s.waiting_for_worker:
            self._dispatch_waiting(s)
        capacity = self.capacity(s)
        free = capacity - len(s.active)
        if self._leases is not None and free > 1 and len(s.queue) > 1:
            self._leases.claim_ahead(s, free)
        while len(s.active) < capacity:
            run = s.queue.pop()
            if run is None:
                break
            self._start(s, run, stored=True)
        if s.queue.wants_refill:
            self._schedule_refill()
        if not s.queue.depth:
            self._room_freed(s.name)

    def start_buffered(self, s: Schedule) -> None:
        """Admit buffered runs while the schedule's slots allow."""
        slots = s.config.slots
        while s.buffered and (slots is None or len(s.active) + s.queue.depth < slots):
            self._admit(s, s.buffered.popleft(), stored=True)

    def capacity(self, s: Schedule) -> int:
        """Runs handed out at once: `per_worker` per warm worker (`processes` of them),
        or `concurrency` for commands."""
        return per_worker(s) * len(self._host.expand(s.name)) if s.python else s.config.concurrency

    def _pick_worker(self, s: Schedule) -> str | None:
        """The ready warm worker with the fewest runs in flight and a free slot, or None."""
        ready = [(s.handed[w], w) for w in self._host.expand(s.name) if self._host.worker_ready(w)]
        if not ready:
            return None
        count, worker = min(ready)
        return worker if count < per_worker(s) else None

    # -- starting ----------------------------------------------------------------------

    def _start(self, s: Schedule, run: Run, *, stored: bool | None = None) -> Run:
        now = self.now()
        deadline_from = run.jittered_time or run.created_at
        first_write = run.state is not RunState.BUFFERED if stored is None else not stored
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
        if self._leases is not None and not first_write:
            if not self._leases.claim(s, run):
                return run
            self._store.update_run(run)  # the whole row, a compare-and-set on the new epoch
            assert self._loop is not None
            self._loop.call_soon(launch)
        elif first_write:
            try:
                inserted = self._store.insert_run(run, then=self.on_loop(launch))
            except StoreError:
                del s.active[run.run_id]  # a shared store unreachable: the caller tries again, or logs it
                raise
            if not inserted:
                # Another supervisor sharing the store enqueued this occurrence first: it runs there.
                log.info("%s: occurrence %s is claimed by another supervisor; not running it here", s.name, run.label())
                del s.active[run.run_id]
                return run
        elif s.config.on_lost == "retry" and self._loop is not None:
            # Its row exists (pending or queued): a crash before this update lands leaves it
            # there and the run runs again, with the same key; at least once allows that.
            self._store.update_run(run)
            self._loop.call_soon(launch)
        else:
            self._store.update_run(run, then=self.on_loop(launch))
        if run.origin is RunOrigin.SCHEDULE:
            s.state = replace(s.state, runs_so_far=s.state.runs_so_far + 1)
            self._store.put_schedule_state(s.name, s.state)
        return run

    def on_loop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback`, to be called from another thread but run on the event loop (the callbacks
        the writer posts after one batch run in one wake-up of the loop)."""
        posts = self._posts
        assert posts is not None

        def post() -> None:
            posts.post(callback)

        return post

    def _launch(self, s: Schedule, run_id: str) -> None:
        """The run's row is committed: tell its worker, or spawn its process."""
        active = s.active.get(run_id)
        if active is None or active.ending_as is not None:
            return  # cancelled (or its worker lost) while the row was being written
        if s.config.timeout_ms is not None and self._loop is not None:
            due = due_time(active.run)
            wait_s = max(0.0, (due - self.now()).total_seconds()) if due is not None else 0.0
            active.timers.append(
                self._loop.call_later(wait_s + s.config.timeout_ms / 1000, self._on_timeout, s, run_id)
            )
        if s.python:
            worker = self._pick_worker(s)
            if worker is not None:
                self._dispatch(s, active, worker)
            else:
                s.waiting_for_worker.append(run_id)
        else:
            self._spawn_command(s, active)

    def _dispatch(self, s: Schedule, active: ActiveRun, worker: str) -> None:
        run = active.run
        active.launched = True
        if active.worker is not None:
            s.handed[active.worker] -= 1
        active.worker = worker
        s.handed[worker] += 1
        nominal = run.nominal_time.isoformat() if run.nominal_time else None
        due = due_time(run)
        self._host.send_run(
            worker,
            run_id=run.run_id,
            args=dict(run.args),
            nominal_time=nominal,
            attempt=run.attempt,
            key=run.idempotency_key,
            not_before=due.timestamp() if due is not None else None,
            epoch=self._leases.epoch(run.run_id) if self._leases is not None else None,
            **(self._leases.worker_lease(run.run_id) if self._leases is not None else {}),
        )

    def _dispatch_waiting(self, s: Schedule) -> None:
        """Hand runs that wait for a worker to ready workers with free slots."""
        waiting, s.waiting_for_worker = s.waiting_for_worker, []
        for i, run_id in enumerate(waiting):
            active = s.active.get(run_id)
            if active is None:
                continue
            worker = self._pick_worker(s)
            if worker is None:
                s.waiting_for_worker.extend(waiting[i:])
                break
            self._dispatch(s, active, worker)

    def _spawn_command(self, s: Schedule, active: ActiveRun) -> None:
        run = active.run
        active.launched = True
        env = {
            E.RUN_ID: run.run_id,
            E.SCHEDULED_TIME: run.nominal_time.isoformat() if run.nominal_time else "",
            E.ATTEMPT: str(run.attempt),
            E.IDEMPOTENCY_KEY: run.idempotency_key,
            E.ORIGIN: str(run.origin),
            E.RUN_ARGS: json.dumps(dict(run.args)),
        }
        epoch = self._leases.epoch(run.run_id) if self._leases is not None else None
        if epoch is not None:
            env[E.EPOCH] = str(epoch)

        def exited(worker: Worker, code: int | None, sig: int | None) -> None:
            self._command_exited(s, run.run_id, code, sig)

        lease = self._leases.worker_lease(run.run_id) if self._leases is not None else {}
        fence_until = lease.get("lease_until")
        try:
            active.process = self._host.spawn_run_process(
                s.name, env, exited, fence_until=fence_until if isinstance(fence_until, float) else None
            )
        except OSError as e:
            self.finish(s, run.run_id, ok=False, error=f"could not spawn: {e}")
            return
        self._mark_running(s, run.run_id, pid=active.process.pid)

    def _command_exited(self, s: Schedule, run_id: str, code: int | None, sig: int | None) -> None:
        ok = code == 0
        error = None if ok else (f"exited with code {code}" if code is not None else f"killed by signal {sig}")
        self.finish(s, run_id, ok=ok, error=error, exit_code=code, signal_number=sig)

    # -- what the worker channel reports -------------------------------------------------

    def reported(self, s: Schedule, name: str, kind: str, fields: Mapping[str, Any]) -> None:
        """A worker instance `name` of `s` reported on a run (`run_started`, `run_progress`,
        `run_lease_expired`, `run_finished`)."""
        run_id = str(fields.get("run_id"))
        if kind == "run_started":
            at = fields.get("at")
            self._mark_running(s, run_id, at=_from_timestamp(at) if isinstance(at, (int, float)) else None)
        elif kind == "run_progress":
            self._host.publish(
                name,
                "run_progress",
                {"run_id": run_id, "progress": fields.get("progress"), "message": fields.get("message")},
            )
        elif kind == "run_lease_expired" and run_id in s.active:
            # The worker stopped it, its lease not renewed in time there: lost, as with its worker.
            self.lost_in_worker(s, [s.active[run_id]], "its lease ran out in the worker (no renewal in time)")
        elif kind == "run_finished":
            at = fields.get("at")
            self.finish(
                s,
                run_id,
                ok=bool(fields.get("ok")),
                error=fields.get("traceback") or fields.get("error"),
                result=fields.get("result"),
                at=_from_timestamp(at) if isinstance(at, (int, float)) else None,
            )

    def _mark_running(self, s: Schedule, run_id: str, pid: int | None = None, at: datetime | None = None) -> None:
        """The run began: `at` is when, as the worker saw it (its start is not late by the channel's batching)."""
        active = s.active.get(run_id)
        if active is None or active.run.state is not RunState.STARTING:
            return
        now = at or self.now()
        active.run = transition(active.run, RunState.RUNNING, at=now, pid=pid)
        self._observe_lateness(s, active.run, now)
        self._store.update_run(active.run)
        self._host.publish(s.name, "run_started", {"run_id": run_id, "attempt": active.run.attempt})

    def _observe_lateness(self, s: Schedule, run: Run, started: datetime) -> None:
        """Fire lateness: from the time a run was due (nominal plus jitter, or a one-shot's datetime) to its start."""
        due = due_time(run)
        if due is not None:
            self.lateness.setdefault(s.name, LatenessHistogram()).observe((started - due).total_seconds())

    def worker_exited(self, s: Schedule, name: str) -> None:
        """Worker instance `name` of `s` is gone: runs it had been handed are lost (and re-run under
        on_lost = "retry"); runs not handed to it yet stay queued for the next worker."""
        self.lost_in_worker(s, [a for a in s.active.values() if a.worker == name], "the worker exited during the run")

    def lost_in_worker(self, s: Schedule, handed: list[ActiveRun], why: str) -> None:
        """Runs handed to a worker ended there without an outcome: lost (re-run under
        on_lost = "retry")."""
        if s.config.on_lost == "retry":
            # Not reported started: back to the queue as they are (a start the worker had no time
            # to report runs again, with the same key: at least once).
            waiting = [a for a in handed if a.run.state is RunState.STARTING and a.ending_as is None]
            for active in waiting:
                self._lost.requeue(s, active)
            handed = [a for a in handed if a not in waiting]
        for active in handed:
            if active.ending_as is None:
                self._lost.rerun(s, active.run)
        for active in handed:
            run_id = active.run.run_id
            if active.ending_as is not None:
                self.finish(s, run_id, ok=False, error=active.run.reason)
            else:
                self.finish(s, run_id, ok=False, error=why, lost=True)

    # -- ending ------------------------------------------------------------------------

    def finish(
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
        at: datetime | None = None,
    ) -> None:
        """The run ended; `at`: when, as the worker saw it (else now)."""
        active = pop_active(s, run_id)
        if active is None:
            return
        for handle in active.timers:
            handle.cancel()
        if run_id in s.waiting_for_worker:
            s.waiting_for_worker.remove(run_id)
        now = self.now()
        ended = at if at is not None and (active.run.started_at is None or at >= active.run.started_at) else now
        run = active.run
        if run.state is RunState.STARTING and not lost and active.launched:
            run = transition(run, RunState.RUNNING, at=ended)
        state = RunState.LOST if lost else active.ending_as or (RunState.SUCCEEDED if ok else RunState.FAILED)
        run = transition(
            run,
            state,
            at=ended,
            error=error,
            result=result,
            exit_code=exit_code,
            signal=signal_number,
            reason=run.reason,
        )
        with self._store.together():  # the final state and the notifications it causes: one transaction
            self.ended(s, run)
            self._host.publish(
                s.name,
                "run_finished",
                {
                    "run_id": run_id,
                    "state": str(state),
                    "duration_ms": run.duration_ms,
                    "error": error,
                    "attempt": run.attempt,
                },
            )
        s.last_finished = now
        self._retry_if_wanted(s, run)
        self.drain(s)
        self.start_buffered(s)
        if s.config.trigger.kind == "after_finish" or s.next_nominal is None:
            self._rearm(s)

    def ended(self, s: Schedule, run: Run, *, barrier: bool = False) -> None:
        """A run of `s` reached a final state here: store it, and show it in `status` at once."""
        self._store.update_run(run, barrier=barrier)
        if run.state is not RunState.SKIPPED:
            s.last_run = newer(s.last_run, run)

    def _retry_if_wanted(self, s: Schedule, run: Run) -> None:
        policy = s.config.retry
        if policy is None or self._loop is None:
            return
        delay_ms = should_retry(policy, run.state, run.attempt)
        if delay_ms is None:
            return
        log.info(
            "%s: run %s %s; retrying in %d ms (attempt %d)", s.name, run.run_id, run.state, delay_ms, run.attempt + 1
        )
        self._loop.call_later(
            delay_ms / 1000,
            lambda: self.occur(s, run.nominal_time, RunOrigin.RETRY, run.args, run.attempt + 1, run.idempotency_key),
        )

    def end_early(self, s: Schedule, active: ActiveRun, ending: RunState, reason: str) -> None:
        """Cancel (cooperatively, then by force after cancel_grace) or terminate a run in flight."""
        if active.ending_as is not None:
            return
        active.ending_as = ending
        active.run = replace(active.run, reason=reason)
        run_id = active.run.run_id
        if not active.launched:  # nothing runs yet: it simply ends
            self.finish(s, run_id, ok=False, error=reason)
            return
        force = ending is RunState.TERMINATED
        if s.python:
            if not force and active.worker is not None:
                self._host.send_cancel(active.worker, run_id)
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
            # A run that ignores its cancellation can only be ended with its worker; the
            # worker's exit ends the run (in the state it was ending as) and any other it held.
            reason = f"run {run_id} did not stop within cancel_grace; SIGKILL to the worker's process group"
            log.warning("%s: %s", s.name, reason)
            self._host.kill_worker(active.worker or s.name, reason)
        elif active.process is not None:
            active.process.signal_group(signal.SIGKILL)

    def _on_timeout(self, s: Schedule, run_id: str) -> None:
        active = s.active.get(run_id)
        if active is not None:
            self.end_early(s, active, RunState.TIMED_OUT, f"timeout after {s.config.timeout_ms} ms")

    # -- the queues' refills from the store ------------------------------------------------

    def refill_queue(self, s: Schedule) -> None:
        """Read the soonest of the schedule's queued runs the store has beyond its queue."""
        total = self._store.count_runs(s.name, {RunState.QUEUED})
        if total > len(s.queue):
            s.queue.refill(self._store.queued_runs(s.name, s.queue.window), total)

    def _schedule_refill(self) -> None:
        if self._loop is not None and self._refill_timer is None:
            self._refill_timer = self._loop.call_soon(self._refill)

    def _refill(self) -> None:
        """Read the next queued runs of the queues that want them, once every queued write is
        done (a queue reads all of a service's queued rows: a run it started is not read again
        as queued)."""
        self._refill_timer = None
        wanting = [s for s in self._schedules.values() if s.queue.wants_refill]
        if not wanting:
            return
        if self._store.pending:
            if self._loop is not None:
                self._refill_timer = self._loop.call_later(REFILL_RETRY_S, self._refill)
            return
        for s in wanting:
            self.refill_queue(s)
            self.drain(s)


def per_worker(s: Schedule) -> int:
    """Runs one warm worker holds: `concurrency` running, and as many again waiting in it
    when runs may run twice (on_lost = "retry"), so a slot that frees is refilled at once
    rather than when its result has crossed the channel. The worker runs `concurrency`."""
    return s.config.concurrency * (2 if s.config.on_lost == "retry" else 1)


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
