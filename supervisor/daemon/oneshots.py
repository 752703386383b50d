"""The pending one-shots: the soonest in memory under one timer, the rest read from the store as those fire.

A one-shot is a `pending` run, in the store at once. `PendingOneshots` keeps the
soonest of them in a `PendingWindow` (core/pending.py), fires them at their time
(`FIRE_AHEAD_S` early for a warm worker, which starts it at its time by its own
clock), and reads the next ones from the store as the window empties. What a due
one-shot becomes (started, queued) is its host's to decide (`OneshotHost`); in
cluster mode the due one-shots are claimed off the event loop (`DueClaims`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.core.pending import PendingWindow
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run, transition
from supervise.supervisor.daemon.due_claims import DueClaims
from supervise.supervisor.daemon.schedules import FIRE_AHEAD_S, MAX_TIMER_S, REFILL_RETRY_S
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.queued import QueuedStore

if TYPE_CHECKING:
    from supervise.supervisor.store.cluster_tenants import ClusterHistory

log = logging.getLogger("supervise.scheduler")


class OneshotHost(Protocol):
    """What the pending one-shots need of the scheduler: the clock, and the schedules' slots."""

    def now(self) -> datetime:
        """The wall clock."""
        ...

    def has(self, service: str) -> bool:
        """`service` has a schedule here (a one-shot of a service that is gone stays pending)."""
        ...

    def fires_ahead(self, service: str) -> bool:
        """The service's runs go to warm workers: its one-shots may be handed over early."""
        ...

    def room(self, service: str) -> int:
        """Cluster mode: free slots of `service` for due one-shots (none while it has a queue)."""
        ...

    def admit(self, run: Run) -> None:
        """A due one-shot of a service that has a schedule: start it, or queue it. StoreError
        if its row cannot be written."""
        ...

    def start_claimed(self, run: Run) -> None:
        """Cluster mode: start a due one-shot this node claimed, or queue it if its slots filled."""
        ...


def new_oneshot(
    service: str,
    service_args: Mapping[str, Any],
    now: datetime,
    at: datetime,
    args: Mapping[str, Any] | None,
    *,
    run_id: str | None = None,
) -> Run:
    """A pending one-shot of `service` at `at`, its `args` over the service's own."""
    return new_run(
        service,
        at=now,
        nominal_time=at,
        origin=RunOrigin.ONESHOT,
        state=RunState.PENDING,
        args={**service_args, **(args or {})},
        run_id=run_id,
    )


class PendingOneshots:
    """The window of pending one-shots, its timer and its refills from the store."""

    def __init__(self, host: OneshotHost, store: QueuedStore, *, leases: ClusterHistory | None = None) -> None:
        self._host = host
        self._store = store
        self._leases = leases
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window = PendingWindow()  # the soonest pending one-shots; the rest are store rows
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: datetime | None = None
        self._refill_timer: asyncio.Handle | None = None
        self._reading = False  # cluster mode: a window refill is being read in a thread
        self._missed: list[Run] = []  # one-shots the window turned away while a refill was read
        self._due_claims = (  # cluster mode: due one-shots claimed off the loop (due_claims.py)
            None
            if leases is None
            else DueClaims(leases, room=host.room, due_by=self._due_by, start=host.start_claimed, now=host.now)
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Timers may be armed from now on (the scheduler has started)."""
        self._loop = loop

    def close(self) -> None:
        """Cancel the timers and stop claiming."""
        for timer in (self._timer, self._refill_timer):
            if timer is not None:
                timer.cancel()
        if self._due_claims is not None:
            self._due_claims.stop()

    def add(self, run: Run) -> None:
        """A new one-shot: its row goes to the store at once (ProtocolError if it exists), and it
        joins the window if it is among the soonest."""
        if not self._store.insert_run(run, barrier=True):
            raise ProtocolError(ErrorCode.CONFLICT, f"run {run.run_id} exists already")
        if self._window.add(run):
            self.arm()
        elif self._reading:
            self._missed.append(run)

    async def add_many(self, runs: list[Run]) -> None:
        """Cluster mode: several new one-shots, inserted with one statement, in a thread: the
        event loop (and with it the node's renewals) goes on meanwhile. ProtocolError if one exists."""
        assert self._leases is not None, "without a cluster, one-shots are added one by one (`add`)"
        inserted = await asyncio.to_thread(self._leases.insert_waiting, runs)
        clash = next((run.run_id for run in runs if run.run_id not in inserted), None)
        if clash is not None:
            raise ProtocolError(ErrorCode.CONFLICT, f"run {clash} exists already")
        kept = [self._window.add(run) for run in runs]
        if self._reading:
            self._missed += [run for run, here in zip(runs, kept, strict=True) if not here]
        if any(kept):
            self.arm()

    def get(self, run_id: str) -> Run | None:
        """A one-shot held in the window, or None."""
        return self._window.get(run_id)

    def remove(self, run_id: str) -> Run | None:
        """Take a one-shot out of the window (it is being cancelled); None if not held there."""
        return self._window.remove(run_id)

    def room_freed(self, service: str) -> None:
        """A slot of `service` is free and it has no queue: cluster mode claims its due one-shots."""
        if self._due_claims is not None:
            self._due_claims.room_freed(service)

    def poll(self) -> None:
        """Cluster mode: read one-shots added through other nodes, and claim those due."""
        if not len(self._window) and not self._store.pending:
            self._window.horizon = None
            self.load()
        if self._due_claims is not None:
            self._due_claims.poll()

    def arm(self) -> None:
        """One timer for the soonest pending run (re-armed when a sooner one is added): at its
        time, or `FIRE_AHEAD_S` before it when a warm worker will start it."""
        soonest = self._window.soonest
        if self._loop is None or soonest is None:
            return
        assert soonest.nominal_time is not None
        ahead = FIRE_AHEAD_S if self._host.fires_ahead(soonest.service) else 0.0
        nxt = soonest.nominal_time - timedelta(seconds=ahead)
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= nxt:
                return
            self._timer.cancel()
        delay = min(MAX_TIMER_S, max(0.0, (nxt - self._host.now()).total_seconds()))
        self._timer_at = nxt
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self._host.now()
        due: set[str] = set()
        with self._store.held():  # the writer takes the due runs' state changes together
            self._take_due(now, due)
        if due and self._due_claims is not None:
            self._due_claims.due(due)
        if self._window.wants_more:
            self._schedule_refill()
        self.arm()

    def _take_due(self, now: datetime, due: set[str]) -> None:
        """Admit the pending one-shots due by `now` (by FIRE_AHEAD_S later for a warm worker's);
        cluster mode: add their services to `due` instead, to be claimed."""
        ahead_until = now + timedelta(seconds=FIRE_AHEAD_S)
        for run in self._window.take(now, ahead_until, lambda r: self._host.fires_ahead(r.service)):
            if not self._host.has(run.service):
                continue  # its service is gone: the row stays pending, for when it comes back
            if self._due_claims is not None:
                due.add(run.service)  # cluster mode: claimed below, as many as there is room for
                continue
            try:
                if self._store.shared:
                    # Every supervisor sharing the store holds this row: the one whose
                    # compare-and-set moves it out of `pending` runs it.
                    run = transition(run, RunState.DUE, at=self._host.now())
                    if not self._store.store.update_run(run, expected_state=RunState.PENDING):
                        continue
                self._host.admit(run)
            except StoreError as e:
                log.error("%s: could not start one-shot run %s: %s", run.service, run.run_id, e)

    def _due_by(self, service: str) -> datetime:
        """Cluster mode: the one-shots of `service` due by this time are claimed now."""
        return self._host.now() + timedelta(seconds=FIRE_AHEAD_S if self._host.fires_ahead(service) else 0.0)

    def _schedule_refill(self) -> None:
        if self._loop is not None and self._refill_timer is None:
            self._refill_timer = self._loop.call_soon(self._refill)

    def _refill(self) -> None:
        """Read the next pending runs from the store, once the writes that matter have landed.

        The window reads pending rows after its horizon: it waits for the writes that add or
        cancel such rows (`unsettled`), not for the stream of state changes of a burst.
        """
        self._refill_timer = None
        if not self._window.wants_more:
            return
        if self._store.unsettled:
            if self._loop is not None:
                self._refill_timer = self._loop.call_later(REFILL_RETRY_S, self._refill)
            return
        self.load()

    def load(self) -> None:
        """Read the soonest pending runs the window has room for from the store, and arm its timer."""
        asked = self._window.room
        if asked == 0:
            return
        if self._due_claims is not None and self._loop is not None:
            self._load_off_loop(asked)
            return
        self._window.load(self._store.pending_runs(self._window.horizon, asked), asked)
        self.arm()

    def _load_off_loop(self, asked: int) -> None:
        """Cluster mode: read the next pending runs in a thread (every node reads the same rows at
        about the same time, up to the window's size). A one-shot added here meanwhile that the
        window turned away (beyond its horizon) may be missing from the read: it is offered
        again once the read is loaded."""
        if self._reading:
            return
        self._reading = True
        horizon = self._window.horizon
        assert self._loop is not None

        async def read() -> None:
            try:
                runs = await asyncio.to_thread(self._store.pending_runs, horizon, asked)
            except StoreError as e:
                log.warning("could not read pending one-shots (%s); the next poll reads them", e)
                return
            finally:
                self._reading = False
                missed, self._missed = self._missed, []
            if self._window.horizon == horizon:
                self._window.load(runs, asked)
            for run in missed:
                self._window.add(run)
            self.arm()
            if self._window.wants_more:
                self._schedule_refill()

        self._loop.create_task(read())
