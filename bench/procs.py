"""Process facts from /proc, and the tag that lets the harness find (and kill) all it started.

Every daemon the harness starts gets BENCH_TAG=<run id> in its environment, which
all three systems pass on to their workers; `tagged()` scans /proc/*/environ for it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

TAG_VAR = "BENCH_TAG"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    head, _, rest = raw.rpartition(")")
    return [head.split("(", 1)[1], *rest.split()]  # [comm, state, ppid, ...]


def alive(pid: int | None) -> bool:
    """True when `pid` exists and is not a zombie."""
    if not pid:
        return False
    f = _stat_fields(pid)
    return f is not None and f[1] not in ("Z", "X")


def comm(pid: int) -> str | None:
    f = _stat_fields(pid)
    return f[0] if f else None


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` itself (not its children), in seconds, to the nanosecond.

    The sum of its threads' run time from /proc/PID/task/*/schedstat: utime + stime
    count in clock ticks (10 ms), which cuts a 5 s slice into steps of 0.2 %, as
    coarse as the idle figures being measured. Falls back to utime + stime where
    schedstat is missing (a kernel without CONFIG_SCHEDSTATS).
    """
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
        if total_ns:
            return total_ns / 1e9
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    f = _stat_fields(pid)
    if f is None:
        raise ProcessLookupError(pid)
    return (int(f[12]) + int(f[13])) / CLK_TCK  # fields 14, 15 of stat(5), comm at index 0


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def children(pid: int) -> set[int]:
    """Direct children of `pid` (all threads), from /proc/PID/task/*/children."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            out.update(int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except FileNotFoundError:
            pass
    return out


def tagged(tag: str) -> list[int]:
    """Every live process whose environment carries BENCH_TAG=tag."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and alive(int(name)):
            found.append(int(name))
    return found


def kill_tagged(tag: str, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process (and its group) carrying the tag; return what was found."""
    found = tagged(tag)
    own_group = os.getpgrp()
    for pid in found:
        try:
            if os.getpgid(pid) != own_group:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in found):
        time.sleep(0.02)
    return found
