"""The /proc sampler against real process trees: children, threads, fds, CPU, and gone processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from supervise.supervisor.daemon.sampler import QUIET_PASSES, Sampler

T = TypeVar("T")

# A Python process with a second thread that starts a child and stays alive: that
# child is listed under the thread's /proc/PID/task/TID/children, not the main thread's.
THREADED = """
import subprocess, threading, time
def forker():
    subprocess.Popen(["sleep", "60"])
    print("ready", flush=True)
    time.sleep(60)
threading.Thread(target=forker, daemon=True).start()
time.sleep(60)
"""


def _until(probe: Callable[[], T | None], what: str, timeout_s: float = 10.0) -> T:
    deadline = time.monotonic() + timeout_s
    while (value := probe()) is None or value is False:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


@contextmanager
def _process(argv: list[str], *, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
    """`argv` in a group of its own, killed with it at the end; its stdout is a pipe, or with
    `stdin` its stdin is (a process that blocks on a line of it before it does anything)."""
    if stdin:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, text=True, start_new_session=True)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
        for end in (proc.stdin, proc.stdout):
            if end is not None:
                end.close()


def test_a_shell_and_its_two_children_are_one_service() -> None:
    with _process(["sh", "-c", "sleep 60 & sleep 60 & wait"]) as shell:
        sampler = Sampler()
        stats = _until(
            lambda: (s := sampler.sample({"sh": shell.pid})[0].get("sh")) and s.children == 2 and s, "two children"
        )
        assert stats.processes == 3 and stats.threads == 3
        assert stats.rss_bytes > 0


def test_a_child_started_by_another_thread_is_found() -> None:
    with _process([sys.executable, "-c", THREADED]) as py:
        assert py.stdout is not None and py.stdout.readline().strip() == "ready"
        tasks = Path(f"/proc/{py.pid}/task")
        (child,) = (int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split())

        def listed_fds() -> int:
            return len(os.listdir(f"/proc/{py.pid}/fd")) + len(os.listdir(f"/proc/{child}/fd"))

        sampler = Sampler()
        # The interpreter may still be closing the pipes of its Popen: sample until the counts agree.
        stats = _until(
            lambda: (s := sampler.sample({"py": py.pid})[0]["py"]).fds == listed_fds() and s, "fds equal to a listing"
        )
        assert stats.children == 1 and stats.processes == 2
        assert stats.threads == 3  # the main thread, the forker, and the sleep child's one


def test_fds_match_a_listing_of_the_fd_folder() -> None:
    with _process(["sleep", "60"]) as sleeper:
        folder = f"/proc/{sleeper.pid}/fd"

        def settled() -> bool:  # a process that is still starting opens and closes files (locale, libc)
            before = len(os.listdir(folder))
            stats = Sampler().sample({"s": sleeper.pid})[0]["s"]
            return before == stats.fds == len(os.listdir(folder))

        _until(settled, "the sample's fd count to equal the fd folder's while the process is idle")


def test_cpu_percent_needs_a_baseline_then_measures_a_busy_process() -> None:
    with _process([sys.executable, "-c", "while True: pass"]) as spinner:
        sampler = Sampler()
        first = sampler.sample({"spin": spinner.pid})[0]["spin"]
        assert first.cpu_percent == 0.0  # the first sample is the baseline
        busy = _until(
            lambda: (s := sampler.sample({"spin": spinner.pid})[0]["spin"]).cpu_percent > 10 and s,
            "the spinner's CPU above 10 %",
        )
        assert busy.cpu_seconds > first.cpu_seconds


def test_a_gone_worker_has_no_figures_and_the_supervisor_is_sampled_too() -> None:
    with _process(["sleep", "60"]) as sleeper:
        pid = sleeper.pid
    services, own = Sampler().sample({"gone": pid})
    assert services == {}
    assert own.rss_bytes > 0 and own.threads >= 1 and own.fds > 0


def _own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_kept_files_are_bounded_and_closed_when_their_processes_go() -> None:
    with _process(["sleep", "60"]) as a, _process(["sleep", "60"]) as b, _process(["sleep", "60"]) as c:
        before = _own_fds()
        kept = Sampler(keep_open=2)
        plain = Sampler(keep_open=0)
        roots = {"a": a.pid, "b": b.pid, "c": c.pid}
        for _ in range(3):  # figures read through kept files equal those of files opened per read
            with_kept, without = kept.sample(roots)[0], plain.sample(roots)[0]
            assert {n: (s.threads, s.processes, s.rss_bytes > 0) for n, s in with_kept.items()} == {
                n: (s.threads, s.processes, s.rss_bytes > 0) for n, s in without.items()
            }
        assert _own_fds() == before + 2 * 2, "two processes' stat and children files, no more"
        os.killpg(a.pid, 9)
        a.wait()
        services = kept.sample(roots)[0]
        assert set(services) == {"b", "c"}  # the exited one is gone, its kept files too
        assert _own_fds() == before + 2 * 2, "the third process took the freed place"
        kept.sample({"b": b.pid})
        assert _own_fds() == before + 2, "files of processes no longer sampled are closed"


def test_a_child_that_exits_leaves_its_tree_whether_its_files_were_kept_or_not() -> None:
    with _process(["sh", "-c", "sleep 60 & sleep 61"]) as shell:
        sampler = Sampler(keep_open=10)
        first = _until(
            lambda: (s := sampler.sample({"sh": shell.pid})[0].get("sh")) and s.children == 2 and s, "two children"
        )
        child = int(Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()[0])
        os.kill(child, 9)  # the sampler's kept files of that child now fail to read
        again = _until(
            lambda: (s := sampler.sample({"sh": shell.pid})[0].get("sh")) and s.children == 1 and s, "one child"
        )
        assert again.processes == 2 and first.processes == 3


def test_no_file_is_kept_while_the_rest_take_over_half_the_open_files_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with _process(["sleep", "60"]) as sleeper:
        sampler = Sampler()
        sampler.sample({"s": sleeper.pid})
        before = _own_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (before + 8, hard))  # over half in use
        try:
            assert sampler.sample({"s": sleeper.pid})[0]["s"].processes == 1
            assert _own_fds() == before - 2, "the kept files were closed"
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        sampler.sample({"s": sleeper.pid})
        assert _own_fds() == before, "kept again once the limit leaves room"


def _same_twice(sampler: Sampler, roots: dict[str, int], name: str) -> object:
    """Sample until two passes in a row hand back the very same figures (the process is idle)."""
    last: list[object] = [None]

    def probe() -> object:
        now = sampler.sample(roots)[0][name]
        same, last[0] = now is last[0], now
        return now if same else None

    return _until(probe, "the same figures object twice in a row")


def test_an_idle_process_keeps_its_figures_until_it_runs_again() -> None:
    with _process([sys.executable, "-c", "import sys\nsys.stdin.readline()\nwhile True: pass"], stdin=True) as py:
        sampler = Sampler()
        roots = {"py": py.pid}
        idle = _same_twice(sampler, roots, "py")
        assert py.stdin is not None
        py.stdin.write("go\n")
        py.stdin.flush()
        busy = _until(lambda: (s := sampler.sample(roots)[0]["py"]).cpu_percent > 10 and s, "its CPU above 10 %")
        assert busy is not idle and busy.cpu_seconds >= idle.cpu_seconds  # type: ignore[attr-defined]


def test_an_idle_process_that_starts_a_child_is_seen_with_it() -> None:
    with _process(["sh", "-c", "read line; sleep 60 & wait"], stdin=True) as shell:
        sampler = Sampler()
        roots = {"sh": shell.pid}
        idle = _same_twice(sampler, roots, "sh")
        assert idle.children == 0  # type: ignore[attr-defined]
        assert shell.stdin is not None
        shell.stdin.write("go\n")
        shell.stdin.flush()
        both = _until(lambda: (s := sampler.sample(roots)[0]["sh"]).children == 1 and s, "the shell's child")
        assert both.processes == 2 and both.threads == 2


def test_an_idle_process_keeps_the_figures_a_full_read_gives() -> None:
    with _process(["sleep", "60"]) as sleeper:
        sampler = Sampler()
        roots = {"s": sleeper.pid}
        idle = _same_twice(sampler, roots, "s")
        # It does not run: the passes up to (and past) a full read again give the same figures.
        figures = [sampler.sample(roots)[0]["s"] for _ in range(QUIET_PASSES + 2)]
        assert all(f == idle for f in figures)
        assert Sampler().sample(roots)[0]["s"] == idle  # a sampler that never saw it reads the same
