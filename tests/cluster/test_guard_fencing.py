"""The orphan guard's fencing deadlines, on real processes: a group is SIGKILLed when its
deadline passes, not before; a moved deadline holds; a cleared one never fires."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from supervise.supervisor.daemon.guard_link import GuardLink
from tests.conftest import alive, wait_for


@pytest.fixture
def guard() -> Iterator[GuardLink]:
    link = GuardLink()
    link.start()
    try:
        yield link
    finally:
        link.stop()


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_a_group_dies_at_its_deadline_and_a_moved_or_cleared_deadline_holds(guard: GuardLink) -> None:
    fenced, moved, cleared = sleeper(), sleeper(), sleeper()
    try:
        for proc, name in ((fenced, "a"), (moved, "b"), (cleared, "c")):
            guard.watch(proc.pid, name)
        soon = time.monotonic() + 0.5
        guard.fence(["a", "b", "c"], soon)
        guard.fence(["b"], soon + 1.5)  # renewed
        guard.fence(["c"], None)  # lease given back cleanly
        wait_for(lambda: fenced.poll() is not None, timeout_s=5, what="the guard to kill a")
        assert time.monotonic() >= soon
        assert alive(moved.pid) and alive(cleared.pid)
        wait_for(lambda: moved.poll() is not None, timeout_s=5, what="the guard to kill b at its new deadline")
        assert time.monotonic() >= soon + 1.5
        assert cleared.poll() is None
    finally:
        for proc in (fenced, moved, cleared):
            proc.kill()
            proc.wait()


def test_a_worker_spawned_under_a_fence_gets_its_deadline(guard: GuardLink) -> None:
    guard.fence(["single"], time.monotonic() + 0.3)
    proc = sleeper()
    try:
        guard.watch(proc.pid, "single")  # what the pool does when it spawns a singleton's worker
        wait_for(lambda: proc.poll() is not None, timeout_s=5, what="the guard to kill it")
    finally:
        proc.kill()
        proc.wait()


def test_a_command_runs_group_is_held_to_its_own_deadline_and_forgotten_when_reaped(guard: GuardLink) -> None:
    renewed, lapsed, reaped = sleeper(), sleeper(), sleeper()
    try:
        for proc in (renewed, lapsed, reaped):
            guard.watch(proc.pid)  # a command run's process: no instance name
        soon = time.monotonic() + 0.5
        for proc in (renewed, lapsed, reaped):
            guard.fence_group(proc.pid, soon)  # spawned under the node's fencing deadline
        guard.fence_group(renewed.pid, soon + 1.5)  # a renewal got through
        guard.forget(reaped.pid)  # it exited and was reaped: its deadline goes with it
        wait_for(lambda: lapsed.poll() is not None, timeout_s=5, what="the guard to kill the lapsed run")
        assert time.monotonic() >= soon
        assert alive(renewed.pid) and alive(reaped.pid)
        wait_for(lambda: renewed.poll() is not None, timeout_s=5, what="the guard to kill it at its new deadline")
        assert time.monotonic() >= soon + 1.5
        assert reaped.poll() is None, "a forgotten group is not the guard's to kill"
    finally:
        for proc in (renewed, lapsed, reaped):
            proc.kill()
            proc.wait()
