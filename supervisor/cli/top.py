"""`supervise top` and `supervise metrics`: the metrics table, and a live view that redraws it.

The view is plain ANSI (clear screen, home, redraw) rather than curses: it
works in any terminal, under tmux and over ssh, and `--once` prints one frame
for scripts and tests. Keys: q quits (Ctrl-C too).
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from supervise.supervisor.cli.render import format_uptime, table
from supervise.supervisor.core.units import format_size_bytes

_CLEAR = "\x1b[H\x1b[2J"
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def _size(n: object) -> str:
    return format_size_bytes(int(n)) if isinstance(n, (int, float)) else "-"


def _runs(runs: Mapping[str, int]) -> str:
    if not runs:
        return "-"
    return " ".join(f"{outcome}:{n}" for outcome, n in sorted(runs.items()))


def _last(svc: Mapping[str, Any]) -> str:
    last = svc.get("last_exit") or {}
    if not last:
        return "-"
    if last.get("signal") is not None:
        return f"{last['cause']} (sig {last['signal']})"
    return f"{last['cause']} ({last.get('code')})" if last.get("code") is not None else str(last["cause"])


def metrics_table(result: Mapping[str, Any]) -> str:
    """One row per service: state, pid, CPU, memory, restarts, exits, heartbeat, runs, last exit."""
    rows = []
    for svc in result["services"]:
        process = svc.get("process") or {}
        limit = svc.get("max_memory_bytes")
        mem = _size(process.get("rss_bytes")) if process else "-"
        if limit is not None:
            mem += f"/{_size(limit)}"
        heartbeat = svc.get("heartbeat_age")
        rows.append(
            [
                svc["name"],
                svc["state"],
                str(svc.get("pid") or "-"),
                f"{process['cpu_percent']:.1f}" if process else "-",
                f"{svc.get('cpu_seconds_total', 0.0):.1f}",
                mem,
                str(process.get("threads", "-")) if process else "-",
                str(process.get("fds", "-")) if process else "-",
                str(process.get("children", "-")) if process else "-",
                f"{svc.get('restarts', 0)} ({svc.get('restarts_in_window', 0)})",
                format_uptime(svc.get("uptime")),
                f"{heartbeat:.1f}s" if isinstance(heartbeat, (int, float)) else "-",
                _runs(svc.get("runs") or {}),
                _last(svc),
            ]
        )
    headers = [
        "NAME",
        "STATE",
        "PID",
        "CPU%",
        "CPU-S",
        "MEM",
        "THR",
        "FDS",
        "CHILD",
        "RESTARTS",
        "UPTIME",
        "HB",
        "RUNS",
        "LAST EXIT",
    ]
    out = table(headers, rows)
    custom = [
        f"  {svc['name']}: "
        + ", ".join(f"{k}={v:g}" for k, v in {**svc.get("counters", {}), **svc.get("gauges", {})}.items())
        for svc in result["services"]
        if svc.get("counters") or svc.get("gauges")
    ]
    if custom:
        out += "\n\ncustom metrics:\n" + "\n".join(custom)
    return out


def frame(result: Mapping[str, Any], *, now: datetime | None = None) -> str:
    """One screen of `top`: a header line about the supervisor, then the metrics table."""
    sup = result.get("supervisor") or {}
    own = sup.get("process") or {}
    services = result["services"]
    running = sum(1 for s in services if s["state"] == "RUNNING")
    health = "healthy" if sup.get("healthy", True) else "UNHEALTHY"
    clock = (now or datetime.now()).strftime("%H:%M:%S")
    header = (
        f"supervise {sup.get('version', '')} pid {sup.get('pid', '-')}  up {format_uptime(sup.get('uptime'))}  "
        f"cpu {own.get('cpu_percent', 0.0):.1f}%  mem {_size(own.get('rss_bytes'))}  "
        f"{running}/{len(services)} running  {health}  {clock}"
    )
    if sup.get("http"):
        header += f"  http://{sup['http']}"
    return header + "\n\n" + metrics_table(result) + "\n\nq: quit"


def run_top(fetch: Callable[[], Mapping[str, Any]], *, interval_s: float = 1.0, once: bool = False) -> None:
    """Redraw `frame(fetch())` every `interval_s` until q or Ctrl-C (or once)."""
    if once:
        sys.stdout.write(frame(fetch()) + "\n")
        sys.stdout.flush()
        return
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    try:
        if fd is not None:
            tty.setcbreak(fd)  # keys arrive one at a time, unechoed; Ctrl-C still signals
        sys.stdout.write(_HIDE_CURSOR)
        while True:
            text = frame(fetch())
            sys.stdout.write(_CLEAR + text + "\n")
            sys.stdout.flush()
            if _wait_for_quit(fd, interval_s):
                return
    except KeyboardInterrupt:
        return
    finally:
        sys.stdout.write(_SHOW_CURSOR)
        sys.stdout.flush()
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(fd: int | None, timeout_s: float) -> bool:
    """Sleep up to `timeout_s`, returning True at once if q (or Q) is pressed."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        if fd is None:
            time.sleep(remaining)
            return False
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            key = os.read(fd, 1)
            if key in (b"q", b"Q", b"\x03", b""):
                return True
    return False
