"""What `status` shows of a service: its live state, and with `detail` its configuration facts.

The reply's keys are documented in docs/protocol.md ("The `status` reply").
Monitoring polls `status`, so a row is built without intermediate dicts, and the
control socket sends each service's row as encoded when it last changed
(`status_wire.py`), with the ages in it (`Since`) filled in at each call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

from supervise.supervisor.daemon.runtime import ServiceRuntime, runs_per_process

if TYPE_CHECKING:
    from supervise.supervisor.daemon.ports import ScheduleView

Resources = Callable[[ServiceRuntime], tuple[float | None, int | None]]
"""A service's CPU percent and RSS from the last sample (None, None before one)."""


class Since:
    """A row's value that is the time since `at_ms`, in seconds: resolved when the row is sent."""

    __slots__ = ("at_ms",)

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def seconds(self, now_ms: int) -> float:
        return (now_ms - self.at_ms) / 1000


def status_fields(svc: ServiceRuntime, resources: Resources, scheduler: ScheduleView | None) -> dict[str, object]:
    """A service's `status` row with its ages left as `Since` markers: uptime, heartbeat_age, last_exit.ago.

    Apart from those, the row is a function of the service's core record (replaced at every
    step), its config and its last resource sample, and, for a scheduled service, the scheduler.
    """
    r = svc.record
    alive = r.pid is not None
    schedule = scheduler.describe(svc.name) if scheduler is not None else None
    last_exit = r.last_exit
    cpu_percent, rss_bytes = resources(svc)
    return {
        "name": svc.name,
        "state": shown_state(svc, scheduler, schedule) if svc.config.schedule is not None else str(r.state),
        "pid": r.pid,
        "uptime": Since(r.running_since_ms) if alive and r.running_since_ms is not None else None,
        "restarts": r.restarts,
        "heartbeat_age": Since(r.last_heartbeat_ms) if alive and r.last_heartbeat_ms is not None else None,
        "last_exit": None
        if last_exit is None
        else {
            "cause": str(last_exit.cause),
            "code": last_exit.code,
            "signal": last_exit.signal,
            "ago": Since(last_exit.at_ms),
            "text": last_exit.describe(),
        },
        "last_error": r.last_error,
        "status_text": r.notify_status,
        "cpu_percent": cpu_percent,
        "rss_bytes": rss_bytes,
        "schedule": schedule,
    }


def status_row(
    svc: ServiceRuntime, now_ms: int, resources: Resources, scheduler: ScheduleView | None
) -> dict[str, object]:
    """A service's live state: state, pid, uptime, restarts, heartbeat age, last exit and error,
    CPU, memory, schedule."""
    row = status_fields(svc, resources, scheduler)
    for key in ("uptime", "heartbeat_age"):
        since = row[key]
        if since is not None:
            row[key] = cast(Since, since).seconds(now_ms)
    last_exit = cast("dict[str, object] | None", row["last_exit"])
    if last_exit is not None:
        last_exit["ago"] = cast(Since, last_exit["ago"]).seconds(now_ms)
    return row


def status_row_detail(
    svc: ServiceRuntime, now_ms: int, resources: Resources, scheduler: ScheduleView | None
) -> dict[str, object]:
    """`status_row` plus the service's configuration facts and rarely needed counters."""
    r = svc.record
    return {
        **status_row(svc, now_ms, resources, scheduler),
        "service": svc.config.name,
        "instance": svc.instance,
        "kind": "python" if svc.config.is_python else "command",
        "type": "notify" if svc.config.sd_notify else "simple",
        "main_pid": r.main_pid,
        "notify_phase": r.notify_phase,
        "critical": svc.config.critical,
        "origin": svc.config.origin,
        "incarnation": r.incarnation,
        "backoff_remaining": (r.backoff_until_ms - now_ms) / 1000 if r.backoff_until_ms is not None else None,
        "max_memory_bytes": svc.config.max_memory_bytes,
        "log_dropped_bytes": svc.log.dropped_bytes if svc.log is not None else 0,
        "log_write_errors": svc.log.write_errors if svc.log is not None else 0,
        "metrics": svc.metrics,
    }


def shown_state(
    svc: ServiceRuntime, scheduler: ScheduleView | None, schedule: Mapping[str, object] | None = None
) -> str:
    """The core's state; a scheduled command shows SCHEDULED, RUNNING or PAUSED instead.

    `schedule`: the scheduler's description of the service, when the caller has it already.
    """
    if runs_per_process(svc.config) and scheduler is not None:
        info = schedule if schedule is not None else scheduler.describe(svc.name) or {}
        if info.get("running"):
            return "RUNNING"
        return "PAUSED" if info.get("paused") else "SCHEDULED"
    return str(svc.record.state)
