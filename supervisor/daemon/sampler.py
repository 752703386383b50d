"""Sampling of every worker's process tree, and of the supervisor itself.

Each process costs one read of `/proc/PID/stat` (CPU times, threads, RSS, start
time), one stat() of `/proc/PID/fd` (its size is the fd count on Linux 6.2+; a
listing before) and one read of `/proc/PID/task/TID/children` per thread (a
single-threaded process needs no task listing). That is a few syscalls per worker, where psutil's
per-attribute reads took several files each and a walk of the whole process
table: with 200 workers sampled every second the difference is most of the
supervisor's idle CPU. The stat and main-thread children files stay open between
passes while descriptors allow (`_ProcFiles`), and a tree's figures are summed in
locals: a pass over 2 000 workers costs about 60 % of what opening each file did.
A single-threaded process that has not run since its last full read (its run time
in `/proc/PID/schedstat`, read first, has not moved) cannot have changed its CPU
time, threads or descriptors: it costs that read and its children's, and keeps
its figures (`QUIET_PASSES`). CPU percent is measured between two samples of the
same process; a pid that now belongs to another process (a different start time)
starts afresh. It blocks on /proc reads, so the shell runs it on a thread.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping

from supervise.supervisor.core.metrics import ProcessStats

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

QUIET_PASSES = 12
"""Passes a process that does not run keeps its figures before it is read in full again.
Only its resident memory can move meanwhile (the kernel may reclaim its pages): at the
default `sample_interval` of 5 s, it is read again at least once a minute."""


class Sampler:
    """Reads CPU, memory, threads, fds and children of process trees; keeps CPU baselines."""

    def __init__(self, *, keep_open: int | None = None) -> None:
        """
        Args:
            keep_open: how many processes' /proc files may stay open between passes (two
                descriptors each). By default as many as keep all the daemon's descriptors
                under half the open-files limit (a pass closes the excess), so the descriptor
                watch's reserve is never taken by the sampler.
        """
        # pid -> (start_ticks, cpu_seconds, monotonic time) of the previous sample
        self._previous: dict[int, tuple[int, float, float]] = {}
        # pid -> (run time in ns before its last full read, that read's figures, passes since) of a
        # process that was single-threaded then
        self._full: dict[int, tuple[int, tuple[float, float, int, int, int], int]] = {}
        self._trees: dict[int, ProcessStats] = {}  # root pid -> its tree's figures in the last pass
        self._keep_open = keep_open
        self._files = _ProcFiles(0)

    def sample(self, roots: Mapping[str, int]) -> tuple[dict[str, ProcessStats], ProcessStats]:
        """Sample each root pid's tree (the root and its descendants) and the supervisor.

        Args:
            roots: service name -> the pid of its worker.

        Returns:
            The figures of each service whose worker still exists, and the supervisor's own.
        """
        now = time.monotonic()
        self._files.keep(self._keep_open if self._keep_open is not None else _keep_open_now(len(self._files)))
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
        for pid in [p for p in self._full if p not in seen]:
            del self._full[pid]
        self._trees = {roots[name]: stats for name, stats in out.items()}
        self._files.retain(seen)
        own = self._read(me, now, root=False, keep=False)
        if own is None:
            return out, ProcessStats()
        percent, cpu_seconds, rss_bytes, threads, fds = own
        return out, ProcessStats(percent, cpu_seconds, rss_bytes, threads, fds, 0, 1)

    def _sample_tree(self, root: int, now: float, seen: set[int]) -> ProcessStats | None:
        """The summed figures of `root` and its descendants; None if `root` is gone.

        Sums in locals and builds one `ProcessStats` per tree: a pass over thousands of
        workers is mostly this loop, so no object is made per process.
        """
        last = self._trees.get(root)
        if last is not None and last.processes == 1 and last.cpu_percent == 0.0 and self._still_alone(root, now):
            seen.add(root)
            return last
        read = self._read(root, now, root=True)
        if read is None:
            return None  # the worker itself is gone: nothing to say about this service
        percent, cpu_seconds, rss_bytes, threads, fds = read
        processes = 1
        seen.add(root)
        tree = self._children_of(root, threads)
        visited = {root}
        for pid in tree:  # breadth-first; the list grows as it is walked
            if pid in visited:
                continue
            visited.add(pid)
            seen.add(pid)
            read = self._read(pid, now, root=False)
            if read is None:
                continue  # exited between its parent's listing and this read
            percent += read[0]
            cpu_seconds += read[1]
            rss_bytes += read[2]
            threads += read[3]
            fds += read[4]
            processes += 1
            tree += self._children_of(pid, read[3])
        stats = ProcessStats(percent, cpu_seconds, rss_bytes, threads, fds, processes - 1, processes)
        last = self._trees.get(root)
        # The same object when nothing changed: the event loop can tell an unchanged sample by identity.
        return last if last == stats else stats

    def _still_alone(self, pid: int, now: float) -> bool:
        """`pid` has not run since its last figures and still has no child: the common case of an
        idle worker, in two reads of kept files (the quiet case of `_read`, with nothing built)."""
        files = self._files.kept_files(pid)
        full = self._full.get(pid)
        previous = self._previous.get(pid)
        if files is None or files[0] != _SCHEDSTAT or full is None or full[2] >= QUIET_PASSES or previous is None:
            return False
        try:
            if _run_ns(os.pread(files[1], 4096, 0)) != full[0] or os.pread(files[2], 4096, 0):
                return False
        except OSError:
            return False  # gone: the general path finds out and forgets its files
        self._previous[pid] = (previous[0], previous[1], now)
        self._full[pid] = (full[0], full[1], full[2] + 1)
        return True

    def _read(
        self, pid: int, now: float, *, root: bool, keep: bool = True
    ) -> tuple[float, float, int, int, int] | None:
        """(CPU percent, CPU seconds, RSS bytes, threads, fds) of one process; None if it is gone (or a zombie).

        A root's CPU seconds include the children it reaped (they are billed to the worker).
        `keep`: its files may stay open for the next pass.
        """
        run_ns = None
        full = self._full.get(pid) if keep else None
        # Single-threaded at its last full read, its schedstat kept open (a kept file is bound to
        # the process, where a path may name a newer one): its run time first, then if it ran the rest.
        if full is not None and self._files.kept(pid, _SCHEDSTAT):
            run_ns = _run_ns(self._files.read(pid, _SCHEDSTAT))
            previous = self._previous.get(pid)
            if (
                run_ns == full[0]
                and full[2] < QUIET_PASSES
                and previous is not None
                and self._files.kept(pid, _SCHEDSTAT)  # not reopened by path after a failed read
            ):
                # It has not run: nothing it alone changes has changed, and its CPU percent is 0.
                self._previous[pid] = (previous[0], previous[1], now)
                self._full[pid] = (run_ns, full[1], full[2] + 1)
                return full[1]
        if keep:
            data = self._files.read(pid, _STAT)
        else:
            data = _read_proc(_path(pid, _STAT), _STAT)
        # The command name is in parentheses and may itself contain spaces or ")".
        fields: list[bytes] = data[data.rfind(b")") + 2 :].split() if data is not None else []
        if len(fields) < 22 or fields[0] == b"Z":  # gone, or a zombie (an exited process)
            self._previous.pop(pid, None)
            self._full.pop(pid, None)
            self._files.forget(pid)
            return None
        start_ticks = int(fields[19])
        cpu_seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        previous = self._previous.get(pid)
        percent = 0.0  # the first sample of a process is the baseline for the next
        if previous is not None and previous[0] == start_ticks and now > previous[2]:
            percent = max(0.0, 100 * (cpu_seconds - previous[1]) / (now - previous[2]))
        self._previous[pid] = (start_ticks, cpu_seconds, now)
        if root:
            cpu_seconds += (int(fields[13]) + int(fields[14])) / _TICKS
        threads = int(fields[17])
        figures = (percent, cpu_seconds, int(fields[21]) * _PAGE, threads, _count_fds(pid))
        if keep and threads == 1 and self._files.kept(pid, _CHILDREN):
            # Its run time before this read is the mark the next pass compares with; a first read has
            # none (what ran between the stat read and a later schedstat read would be missed).
            quiet = (0.0, cpu_seconds, figures[2], 1, figures[4])
            if run_ns is not None:
                self._full[pid] = (run_ns, quiet, 0)
            else:
                self._full[pid] = (-1, quiet, 0)
            self._files.prefer(pid, _SCHEDSTAT)
        elif pid in self._full:
            del self._full[pid]
            self._files.prefer(pid, _STAT)
        return figures

    def _children_of(self, pid: int, threads: int) -> list[int]:
        """Child pids, from /proc/PID/task/TID/children: one read per thread (one thread: no listing)."""
        found: list[int] = []
        data = self._files.read(pid, _CHILDREN)  # the main thread's
        if data:
            found += [int(child) for child in data.split()]
        if threads == 1:
            return found
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return found  # gone
        me = str(pid)
        for tid in tids:
            if tid != me:
                data = _read_proc(f"/proc/{pid}/task/{tid}/children", _CHILDREN)
                if data:  # None: a thread that exited between the listing and the read
                    found += [int(child) for child in data.split()]
        return found


_STAT = 0
_CHILDREN = 1
_SCHEDSTAT = 2


def _run_ns(data: bytes | None) -> int | None:
    """The run time in `/proc/PID/schedstat` (its first number, in ns); None if it cannot be read."""
    if not data:
        return None
    try:
        return int(data.split(None, 1)[0])
    except ValueError:
        return None


class _ProcFiles:
    """Two files of each sampled process, kept open between passes and read with pread: half the
    cost of opening them each time, for two descriptors per process, up to `keep` processes (the
    rest are opened per read). The files are the main thread's `children` and either `stat` or,
    for a process the sampler reads `schedstat` of first (`prefer`), that. A kept descriptor
    belongs to its process, not to its pid: once the process is gone, reads fail, even if the
    pid was given to another process meanwhile, and the files are then opened afresh."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._open: dict[int, tuple[int, int, int]] = {}  # pid -> (_STAT or _SCHEDSTAT, its fd, children fd)

    def __len__(self) -> int:
        return len(self._open)

    def keep(self, processes: int) -> None:
        """Keep at most this many processes' files open from now on (closes the excess)."""
        self._keep = processes
        for pid in list(self._open)[processes:]:
            self.forget(pid)

    def read(self, pid: int, which: int) -> bytes | None:
        """The file's bytes; None if the process is gone."""
        files = self._open.get(pid)
        if files is not None:
            fd = files[2] if which == _CHILDREN else files[1] if which == files[0] else -1
            if fd < 0:
                return _read_proc(_path(pid, which), which)
            try:
                return _pread_all(fd, which)
            except OSError:
                self.forget(pid)  # that process is gone; its pid may be another's now
        if len(self._open) < self._keep and which != _SCHEDSTAT:
            files = self._open_files(pid, _STAT)
            if files is not None:
                self._open[pid] = files
                try:
                    return _pread_all(files[2] if which == _CHILDREN else files[1], which)
                except OSError:
                    self.forget(pid)
                    return None
        return _read_proc(_path(pid, which), which)

    def kept_files(self, pid: int) -> tuple[int, int, int] | None:
        """(`_STAT` or `_SCHEDSTAT`, its descriptor, the children file's) of `pid`, if kept open."""
        return self._open.get(pid)

    def kept(self, pid: int, which: int) -> bool:
        """`which` of `pid` is read through a descriptor kept open."""
        files = self._open.get(pid)
        return files is not None and (which == _CHILDREN or files[0] == which)

    def prefer(self, pid: int, which: int) -> None:
        """Keep `which` (`_STAT` or `_SCHEDSTAT`) of `pid` open, instead of the other, if its files are kept."""
        files = self._open.get(pid)
        if files is None or files[0] == which:
            return
        try:
            fd = os.open(_path(pid, which), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.forget(pid)
            return
        os.close(files[1])
        self._open[pid] = (which, fd, files[2])

    def forget(self, pid: int) -> None:
        files = self._open.pop(pid, None)
        if files is not None:
            os.close(files[1])
            os.close(files[2])

    def retain(self, pids: set[int]) -> None:
        """Close the files of processes not sampled in this pass."""
        for pid in [p for p in self._open if p not in pids]:
            self.forget(pid)

    @staticmethod
    def _open_files(pid: int, which: int) -> tuple[int, int, int] | None:
        try:
            first = os.open(_path(pid, which), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return which, first, os.open(_path(pid, _CHILDREN), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(first)
            return None


def _path(pid: int, which: int) -> str:
    if which == _CHILDREN:
        return f"/proc/{pid}/task/{pid}/children"
    return f"/proc/{pid}/stat" if which == _STAT else f"/proc/{pid}/schedstat"


def _pread_all(fd: int, which: int) -> bytes:
    """A /proc file's bytes from its start: one read for stat (it fits a page), to the end
    for a children list (it can be longer)."""
    data = os.pread(fd, 4096, 0)
    if which == _CHILDREN and data:
        while chunk := os.pread(fd, 65536, len(data)):
            data += chunk
    return data


def _keep_open_now(kept: int) -> int:
    """Processes whose files may stay open (two descriptors each): as many as keep the daemon's
    other descriptors and these under half the open-files limit. `kept`: processes whose files
    are open now (their descriptors are not counted against them), so the budget does not swing
    from pass to pass."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 0
    try:
        used = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
    others = used - 2 * kept
    return max(0, (soft // 2 - others) // 2)


def _read_proc(path: str, which: int) -> bytes | None:
    """A /proc file's bytes without a buffered file object, or None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _pread_all(fd, which)
    except OSError:
        return None
    finally:
        os.close(fd)


def _count_fds(pid: int) -> int:
    """Open fds of `pid`: the size Linux 6.2+ reports for /proc/PID/fd, else a listing of it."""
    try:
        size = os.stat(f"/proc/{pid}/fd").st_size
        return size if size > 0 else len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
