"""What is read of the scheduler: a run as the protocol returns it, a schedule as `status`,
`metrics` and `next` show it.

Read-only: nothing here changes a schedule, except the cached last run `last_run` reads.
"""

from __future__ import annotations

import time
from datetime import datetime

from supervise.supervisor.core.lateness import LatenessHistogram
from supervise.supervisor.core.runs import FINAL, Run, RunState
from supervise.supervisor.daemon.schedules import Schedule
from supervise.supervisor.store.queued import QueuedStore

NEXT_FIRES_SHOWN = 5  # fire times `describe` lists (the API and the dashboard show them)
# `status` shows each schedule's last run: read from the store at most this often (a
# store shared with other supervisors has their runs too); runs that end here update it at once.
LAST_RUN_REFRESH_S = 5.0


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
        "key": run.idempotency_key,
    }


def run_summary(run: Run) -> dict[str, object]:
    """A schedule's last run as `describe` shows it: the last line of its error only."""
    return {
        "run_id": run.run_id,
        "state": str(run.state),
        "nominal_time": run.nominal_time.isoformat() if run.nominal_time else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_ms": run.duration_ms,
        "error": (run.error or "").strip().splitlines()[-1] if run.error else None,
    }


def newer(cached: Run | None, other: Run) -> Run:
    """The later-created of two final runs (the store's order); the same run: the copy kept here."""
    if cached is None:
        return other
    if cached.run_id == other.run_id:
        return cached
    return other if (other.created_at, other.run_id) > (cached.created_at, cached.run_id) else cached


def last_run(store: QueuedStore, s: Schedule) -> Run | None:
    """The newest final run of `s` (not skipped), read again from the store every LAST_RUN_REFRESH_S."""
    now = time.monotonic()
    if s.last_run_read_at is None or now - s.last_run_read_at > LAST_RUN_REFRESH_S:
        found = store.list_runs(s.name, states=set(FINAL) - {RunState.SKIPPED}, limit=1)
        s.last_run_read_at = now
        if found:
            s.last_run = newer(s.last_run, found[0])
    return s.last_run


def next_fires(s: Schedule, now: datetime, count: int) -> list[str]:
    """The next `count` fire times of `s` after `now` (or after its last fire), by its trigger alone."""
    times: list[str] = []
    after = max(now, s.state.last_fired) if s.state.last_fired else now
    runs = s.state.runs_so_far
    for _ in range(count):
        nxt = s.config.trigger.next_fire(after, runs_so_far=runs, last_finished=s.last_finished)
        if nxt is None:
            break
        times.append(nxt.isoformat())
        after, runs = nxt, runs + 1
    return times


def armed_fires(s: Schedule, count: int) -> list[datetime]:
    """The next `count` fire times from the armed one on (fewer if the trigger ends; none while paused)."""
    if s.next_at is None or s.state.paused:
        return []
    out = [s.next_at]
    while len(out) < count:
        following = s.config.trigger.next_fire(out[-1], runs_so_far=s.state.runs_so_far + len(out))
        if following is None:
            break
        out.append(following)
    return out


def describe(s: Schedule, last: Run | None) -> dict[str, object]:
    """A schedule's trigger, next fires, counters and last run (`status`, the API, the dashboard)."""
    return {
        "trigger": s.config.trigger.describe(),
        "paused": s.state.paused,
        "next_fire": s.next_at.isoformat() if s.next_at else None,
        "next_fires": [t.isoformat() for t in armed_fires(s, NEXT_FIRES_SHOWN)],
        "running": len(s.active),
        "buffered": len(s.buffered),
        "queued": s.queue.depth,
        "in_flight": len(s.active),
        "concurrency": s.config.concurrency,
        "on_lost": s.config.on_lost,
        "runs_so_far": s.state.runs_so_far,
        "last_run": run_summary(last) if last is not None else None,
    }


def figures(s: Schedule, lateness: LatenessHistogram | None) -> dict[str, object]:
    """Queue depth, runs in flight and fire lateness of a schedule (for `metrics`)."""
    return {
        "runs_queued": s.queue.depth,
        "runs_in_flight": len(s.active),
        "fire_lateness": lateness.as_dict() if lateness is not None else None,
    }
