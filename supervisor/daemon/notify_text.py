"""A notification's words: its one-line summary, its plain-text body, and its row as listed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from supervise.supervisor.core.alerts import Alert
from supervise.supervisor.core.units import format_duration_ms
from supervise.supervisor.store.base import Notification


def text_of(p: Mapping[str, Any]) -> str:
    """The plain-text body: what, where, when, the error's first lines, the log's last, how to see more."""
    counts = f" ({_counts(p['counts'])})" if p["count"] > 1 else ""
    lines = [
        p["summary"],
        "",
        f"service: {p['service']}",
        f"event:   {p['event']}{counts}",
        f"when:    {datetime.fromisoformat(p['time']).isoformat(timespec='seconds')}",
        f"host:    {p['host']}",
    ]
    if p["run_id"]:
        lines.append(f"run:     {p['run_id']}")
    if p["error_lines"]:
        lines += ["error:", *(f"  {line}" for line in p["error_lines"])]
    if p["output_lines"]:
        lines += ["output (the log's last lines):", *(f"  {line}" for line in p["output_lines"])]
    return "\n".join([*lines, "", f"more:    {p['command']}"])


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def summary_of(alert: Alert, detail: Mapping[str, object], since: datetime | None, now: datetime) -> str:
    name = alert.subject
    run = f"run {str(detail['run_id'])[:12]}" if detail.get("run_id") else None
    for_how_long = f" for {format_duration_ms(int((now - since).total_seconds() * 1000))}" if since else ""
    match alert.event:
        case "digest":
            return f"{name}: {alert.count} more events{for_how_long} ({_counts(alert.counts)})"
        case "recovered":
            return f"{name}: recovered after {alert.count} failures{for_how_long}"
        case "fatal":
            return f"{name}: FATAL, gave up restarting ({detail.get('reason') or 'too many restarts'})"
        case "missed":
            return f"{name}: {run or 'a run'} was missed ({detail.get('reason')})"
        case "success":
            return f"{name}: {run or 'run'} succeeded"
        case "retries_exhausted":
            return f"{name}: {run or 'a run'} failed, retries exhausted (attempt {detail.get('attempt')})"
        case "timed_out" | "lost":
            return f"{name}: {run or 'a run'} {alert.event.replace('_', ' ')}"
    if run:
        return f"{name}: {run} failed"
    code, sig = detail.get("code"), detail.get("signal")
    how = f"killed by signal {sig}" if sig else f"exited with code {code}" if code is not None else "failed to start"
    return f"{name}: {how}"


def notification_to_dict(n: Notification) -> dict[str, object]:
    """An outbox row as the `notifications` command returns it."""
    return {
        "id": n.id,
        "channel": n.channel,
        "service": n.service,
        "event": n.event,
        "state": str(n.state),
        "attempts": n.attempts,
        "created_at": n.created_at.isoformat(),
        "next_attempt_at": n.next_attempt_at.isoformat(),
        "delivered_at": n.delivered_at.isoformat() if n.delivered_at else None,
        "last_error": n.last_error,
        "summary": n.payload.get("summary"),
    }
