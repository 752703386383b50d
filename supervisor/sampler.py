"""psutil sampling of every worker's process tree, and of the supervisor itself.

One `Sampler.sample` call reads all workers at once: the process table is
listed once per call (not once per worker), each process keeps one cached
`psutil.Process` so its CPU percent is measured since the previous call, and
processes that vanished are forgotten. It blocks on /proc reads, so the shell
runs it on one thread of its own, once per sampling interval.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil
from supervise.supervisor.metrics import ProcessStats


class Sampler:
    """Reads CPU, memory, threads, fds and children of process trees; keeps CPU baselines."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._me = psutil.Process(os.getpid())
        self._me.cpu_percent(None)  # the baseline: the first real sample measures from here

    def sample(self, roots: Mapping[str, int]) -> tuple[dict[str, ProcessStats], ProcessStats]:
        """Sample each root pid's tree (the root and its descendants) and the supervisor.

        Args:
            roots: service name -> the pid of its worker.

        Returns:
            The figures of each service whose worker still exists, and the supervisor's own.
        """
        children = _children_map() if roots else {}
        seen: set[int] = set()
        out: dict[str, ProcessStats] = {}
        for name, root in roots.items():
            tree = [root]
            visited = {root}
            for pid in tree:  # breadth-first; the list grows as it is walked
                for child in children.get(pid, ()):
                    if child not in visited:
                        visited.add(child)
                        tree.append(child)
            seen |= visited
            total: ProcessStats | None = None
            for pid in tree:
                stats = self._read(pid, root=pid == root)
                if stats is None:
                    if pid == root:
                        break  # the worker itself is gone: nothing to say about this service
                    continue
                total = stats if total is None else total + stats
            else:
                if total is not None:
                    out[name] = ProcessStats(
                        total.cpu_percent,
                        total.cpu_seconds,
                        total.rss_bytes,
                        total.threads,
                        total.fds,
                        children=len(tree) - 1,
                        processes=total.processes,
                    )
        for pid in list(self._procs):
            if pid not in seen:
                del self._procs[pid]
        return out, self._stats(self._me, root=False) or ProcessStats()

    def _read(self, pid: int, *, root: bool) -> ProcessStats | None:
        proc = self._procs.get(pid)
        if proc is None or not proc.is_running():  # is_running also catches a reused pid
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                self._procs.pop(pid, None)
                return None
            proc.cpu_percent(None)  # first call: 0.0, the baseline for the next sample
            self._procs[pid] = proc
        return self._stats(proc, root=root)

    @staticmethod
    def _stats(proc: psutil.Process, *, root: bool) -> ProcessStats | None:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu_seconds = times.user + times.system
                if root:
                    # Children the worker has reaped are billed to it here.
                    cpu_seconds += times.children_user + times.children_system
                return ProcessStats(
                    cpu_percent=proc.cpu_percent(None),
                    cpu_seconds=cpu_seconds,
                    rss_bytes=proc.memory_info().rss,
                    threads=proc.num_threads(),
                    fds=proc.num_fds(),
                    processes=1,
                )
        except psutil.Error:
            return None


def _children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from one pass over the process table."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid:
            children.setdefault(ppid, []).append(proc.pid)
    return children
