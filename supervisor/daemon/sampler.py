"""Sampling of every worker's process tree, and of the supervisor itself.

Each process costs one read of `/proc/PID/stat` (CPU times, threads, RSS, start
time), one stat() of `/proc/PID/fd` (its size is the fd count on Linux 6.2+; a
listing before) and one read of `/proc/PID/task/TID/children` per thread (a
single-threaded process needs no task listing). That is a few syscalls per worker, where psutil's
per-attribute reads took several files each and a walk of the whole process
table: with 200 workers sampled every second the difference is most of the
supervisor's idle CPU. CPU percent is measured between two samples of the same
process; a pid that now belongs to another process (a different start time)
starts afresh. It blocks on /proc reads, so the shell runs it on a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from supervise.supervisor.core.metrics import ProcessStats

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class _Stat:
    start_ticks: int  # identifies the process across pid reuse
    cpu_seconds: float
    reaped_children_cpu_seconds: float
    threads: int
    rss_bytes: int


class Sampler:
    """Reads CPU, memory, threads, fds and children of process trees; keeps CPU baselines."""

    def __init__(self) -> None:
        # pid -> (start_ticks, cpu_seconds, monotonic time) of the previous sample
        self._previous: dict[int, tuple[int, float, float]] = {}

    def sample(self, roots: Mapping[str, int]) -> tuple[dict[str, ProcessStats], ProcessStats]:
        """Sample each root pid's tree (the root and its descendants) and the supervisor.

        Args:
            roots: service name -> the pid of its worker.

        Returns:
            The figures of each service whose worker still exists, and the supervisor's own.
        """
        now = time.monotonic()
        seen: set[int] = set()
        out: dict[str, ProcessStats] = {}
        for name, root in roots.items():
            total = self._sample_tree(root, now, seen)
            if total is not None:
                out[name] = total
        me = os.getpid()
        seen.add(me)
        for pid in list(self._previous):
            if pid not in seen:
                del self._previous[pid]
        own = self._read(me, now, root=False)
        return out, own[0] if own is not None else ProcessStats()

    def _sample_tree(self, root: int, now: float, seen: set[int]) -> ProcessStats | None:
        """The summed figures of `root` and its descendants; None if `root` is gone."""
        tree = [root]
        visited = {root}
        total: ProcessStats | None = None
        for pid in tree:  # breadth-first; the list grows as it is walked
            read = self._read(pid, now, root=pid == root)
            if read is None:
                if pid == root:
                    return None  # the worker itself is gone: nothing to say about this service
                continue
            stats, threads = read
            total = stats if total is None else total + stats
            for child in _children_of(pid, threads):
                if child not in visited:
                    visited.add(child)
                    tree.append(child)
        seen |= visited
        assert total is not None
        return ProcessStats(
            total.cpu_percent,
            total.cpu_seconds,
            total.rss_bytes,
            total.threads,
            total.fds,
            children=len(tree) - 1,
            processes=total.processes,
        )

    def _read(self, pid: int, now: float, *, root: bool) -> tuple[ProcessStats, int] | None:
        """A process's figures and its thread count; None if it is gone (or a zombie)."""
        stat = _read_stat(pid)
        if stat is None:
            self._previous.pop(pid, None)
            return None
        previous = self._previous.get(pid)
        percent = 0.0  # the first sample of a process is the baseline for the next
        if previous is not None and previous[0] == stat.start_ticks and now > previous[2]:
            percent = max(0.0, 100 * (stat.cpu_seconds - previous[1]) / (now - previous[2]))
        self._previous[pid] = (stat.start_ticks, stat.cpu_seconds, now)
        cpu_seconds = stat.cpu_seconds
        if root:
            cpu_seconds += stat.reaped_children_cpu_seconds  # children the worker reaped are billed to it
        stats = ProcessStats(
            cpu_percent=percent,
            cpu_seconds=cpu_seconds,
            rss_bytes=stat.rss_bytes,
            threads=stat.threads,
            fds=_count_fds(pid),
            processes=1,
        )
        return stats, stat.threads


def _read_proc(path: str, *, whole: bool = False) -> bytes | None:
    """A /proc file's bytes without a buffered file object, or None if it is gone.

    One read returns a file that fits a page (stat); `whole` reads on to the end
    (a children list can be longer).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
        if whole and data:
            while chunk := os.read(fd, 65536):
                data += chunk
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_stat(pid: int) -> _Stat | None:
    data = _read_proc(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name is in parentheses and may itself contain spaces or ")".
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 22 or fields[0] == b"Z":
        return None  # a zombie is an exited process
    return _Stat(
        start_ticks=int(fields[19]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _TICKS,
        reaped_children_cpu_seconds=(int(fields[13]) + int(fields[14])) / _TICKS,
        threads=int(fields[17]),
        rss_bytes=int(fields[21]) * _PAGE,
    )


def _count_fds(pid: int) -> int:
    """Open fds of `pid`: the size Linux 6.2+ reports for /proc/PID/fd, else a listing of it."""
    try:
        size = os.stat(f"/proc/{pid}/fd").st_size
        return size if size > 0 else len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _children_of(pid: int, threads: int) -> list[int]:
    """Child pids, from /proc/PID/task/TID/children: one read per thread (one thread: no listing)."""
    try:
        tids = [str(pid)] if threads == 1 else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone
    found: list[int] = []
    for tid in tids:
        data = _read_proc(f"/proc/{pid}/task/{tid}/children", whole=True)
        if data:  # None: a thread that exited between the listing and the read
            found += [int(child) for child in data.split()]
    return found
