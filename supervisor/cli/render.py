"""Human-readable tables of what the control protocol returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    return "\n".join(lines)


def status_table(result: Mapping[str, Any]) -> str:
    rows = []
    for svc in result["services"]:
        last_exit = svc.get("last_exit") or {}
        error = (svc.get("last_error") or "").strip().splitlines()
        if last_exit.get("cause") == "spawn_failed":
            error = error[:1]  # what the OS said (ENOENT: No such file ...), not the give-up line after it
        rows.append(
            [
                svc["name"],
                svc["state"],
                str(svc["pid"] or "-"),
                format_uptime(svc.get("uptime")),
                str(svc["restarts"]),
                last_exit.get("text", "-"),
                (error[-1][:60] if error else ""),
            ]
        )
    out = table(["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "LAST ERROR"], rows)
    scheduled = [svc for svc in result["services"] if svc.get("schedule")]
    if scheduled:
        out += "\n\n" + schedule_table(scheduled)
    sup = result.get("supervisor") or {}
    if sup and not sup.get("healthy", True):
        out += "\n\nunhealthy: a critical service is not up (FATAL, BACKOFF or STARTING)"
    notes = sup.get("notifications") or {}
    if notes.get("failed"):  # docs/notifications.md
        out += (
            f"\n\nnotifications: {notes.get('sent', 0)} sent, {notes['failed']} failed attempts, "
            f"{notes.get('given_up', 0)} given up; last error: {notes.get('last_error')}"
        )
    return out


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for run in runs:
        error = (run.get("error") or run.get("reason") or "").strip().splitlines()
        duration = run.get("duration_ms")
        rows.append(
            [
                run["run_id"][:12],
                run["service"],
                run["state"],
                run.get("origin", ""),
                str(run.get("attempt", 1)),
                run.get("nominal_time") or "-",
                f"{duration / 1000:.3f}s" if duration is not None else "-",
                error[-1][:60] if error else "",
            ]
        )
    return table(["RUN", "SERVICE", "STATE", "ORIGIN", "TRY", "NOMINAL", "DURATION", "ERROR/REASON"], rows)


def schedule_table(services: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for svc in services:
        sched = svc["schedule"]
        last = sched.get("last_run") or {}
        rows.append(
            [
                svc["name"],
                sched["trigger"] + (" (paused)" if sched.get("paused") else ""),
                sched.get("next_fire") or "-",
                f"{last.get('state', '-')} {last.get('finished_at') or ''}".strip(),
                str(sched.get("running", 0)),
                str(sched.get("queued", 0)),
            ]
        )
    return table(["SCHEDULED", "TRIGGER", "NEXT FIRE", "LAST RUN", "RUNNING", "QUEUED"], rows)


def notifications_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The outbox, newest first: one line per message and channel."""
    shown = [
        [
            str(n.get("created_at", ""))[:19],
            n["service"],
            n["event"],
            n["channel"],
            n["state"],
            str(n["attempts"]),
            (n.get("last_error") or n.get("summary") or "")[:70],
        ]
        for n in rows
    ]
    return table(["CREATED", "SERVICE", "EVENT", "CHANNEL", "STATE", "TRIES", "LAST ERROR / SUMMARY"], shown)
