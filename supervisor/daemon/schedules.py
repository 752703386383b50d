"""A scheduled service as the scheduler holds it: its timer, its runs in flight, its queue.

The data the scheduler's parts share (firing in `firing.py`, runs in
`run_dispatch.py`, the read-only views in `run_views.py`); the decisions about it
come from the pure core.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from datetime import datetime

from supervise.supervisor.config.schedule import ScheduleConfig
from supervise.supervisor.core.run_queue import RunQueue
from supervise.supervisor.core.runs import Run, RunOrigin, RunState
from supervise.supervisor.daemon.processes import Worker
from supervise.supervisor.store.base import ScheduleState

IN_FLIGHT = frozenset({RunState.STARTING, RunState.RUNNING})
WAITING = frozenset({RunState.DUE, RunState.BUFFERED})  # found at start: their time passed meanwhile
MAX_TIMER_S = 30.0  # re-read the wall clock at least this often, so clock jumps are noticed
REFILL_RETRY_S = 0.05  # a refill from the store waits for the store's queued writes to land first
FIRE_AHEAD_S = 0.05
"""How early an occurrence for a warm worker is fired: the supervisor records it and hands it
over ahead of its time, and the worker starts it at its time by its own clock (`not_before`),
so the start is not late by the supervisor's work on a burst of simultaneous occurrences."""


@dataclass
class ActiveRun:
    """A run of a schedule between its start and its final state."""

    run: Run
    process: Worker | None = None  # a command run's own process
    ending_as: RunState | None = None  # set by cancel or timeout: the state it will be recorded in
    launched: bool = False  # its worker was told, or its process spawned
    worker: str | None = None  # the instance (warm worker) it was handed to
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


@dataclass
class Schedule:
    """One scheduled service: its config and stored state, its next fire, and its runs."""

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
    queue: RunQueue = field(default_factory=RunQueue)  # admitted runs waiting for a free slot (concurrency)
    handed: collections.Counter[str] = field(default_factory=collections.Counter)  # runs in `active` per warm worker


def pop_active(s: Schedule, run_id: str) -> ActiveRun | None:
    """Take a run out of `s.active`, and out of its worker's count (`pick_worker` reads that count
    for every run it hands out, instead of counting up to 2 x concurrency runs each time)."""
    active = s.active.pop(run_id, None)
    if active is not None and active.worker is not None:
        s.handed[active.worker] -= 1
    return active


def due_time(run: Run) -> datetime | None:
    """When a run is due to start: a scheduled occurrence's time plus jitter, a one-shot's
    datetime; None for manual, catch-up, backfill runs, retries and re-runs (due at once)."""
    if run.origin is RunOrigin.SCHEDULE:
        return run.jittered_time
    if run.origin is RunOrigin.ONESHOT:
        return run.nominal_time
    return None
