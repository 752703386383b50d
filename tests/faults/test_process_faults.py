"""reliability.md §3, process trees, reaping and pids: F-09, F-11, F-12, F-13, F-14."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from supervise.supervisor.daemon.output import RotatingLog
from supervise.supervisor.daemon.processes import SpawnRequest, Worker, spawn
from tests.conftest import (
    Daemon,
    alive,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)
from tests.faults.support import (
    FAULTY,
    FOREVER,
    events,
    fd_count,
    instance_marker,
    processes_with_marker,
    zombies,
)


def test_f09_grandchildren_die_with_their_worker(daemon_factory, short_dir: Path) -> None:
    py_mark, sh_mark = short_dir / "py.pids", short_dir / "sh.pids"
    d: Daemon = daemon_factory(
        {
            "py": {
                "target": f"{FAULTY}:grandchildren_then_crash",
                "restart": "never",
                "env": {"FAULTY_MARK": str(py_mark)},
            },
            "sh": {
                "command": [
                    "sh",
                    "-c",
                    f"sleep 1000 & echo $! > {sh_mark}; sleep 1000 & echo $! >> {sh_mark}; sleep 0.5; exit 3",
                ],
                "start_timeout": "100ms",
                "restart": "never",
            },
        }
    )
    for name, mark in (("py", py_mark), ("sh", sh_mark)):
        pids = [
            int(p)
            for p in wait_for(
                lambda m=mark: m.exists() and len(m.read_text().split()) == 2 and m.read_text().split(),
                timeout_s=30,
                what=f"{name}'s grandchildren",
            )
        ]
        svc = d.wait_state(name, "EXITED", timeout_s=30)
        assert svc["last_exit"]["code"] in (1, 3)
        # The leader exited by itself; its group got SIGKILL before it was reaped.
        wait_for(lambda p=pids: not any(alive(x) for x in p), timeout_s=2, what=f"{name}'s grandchildren {pids} to die")
    assert not zombies(d.pid)


def test_f11_zombie_storm_of_50_simultaneous_exits_leaves_no_zombie(daemon_factory) -> None:
    names = [f"s{i:02d}" for i in range(50)]
    d: Daemon = daemon_factory(
        {n: {"command": ["sleep", "1000"], "start_timeout": "0s", "restart": "never"} for n in names}
    )
    pids = {n: d.wait_running_pid(n) for n in names}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(s["state"] == "EXITED" for s in d.client.call("status")["services"]), what="50 exits noticed")
    exited = {e["service"]: e for e in events(d, kind="exited")}
    assert sorted(exited) == names
    assert all(exited[n]["pid"] == pids[n] and exited[n]["signal"] == signal.SIGKILL for n in names)
    assert not zombies(d.pid)
    assert not any(alive(p) for p in pids.values())


def test_f12_sigkill_of_the_supervisor_leaves_no_orphans_and_marks_runs_lost(short_dir: Path) -> None:
    runs_file = short_dir / "runs.txt"
    config = write_config(
        short_dir,
        {
            "py": {"target": FOREVER},
            "tree": {"command": ["sh", "-c", "sleep 1000 & sleep 1000"], "start_timeout": "100ms"},
            "pyjob": {"target": "tests.children.jobs:slow", "manual": True, "env": {"RUNS_FILE": str(runs_file)}},
            "cmdjob": {"command": ["sleep", "1000"], "manual": True},
        },
    )
    d = start_daemon(config)
    try:
        py = d.wait_running_pid("py")
        d.wait_running_pid("tree")
        d.wait_running_pid("pyjob")
        py_run = d.client.call("run", name="pyjob")["run_id"]
        cmd_run = d.client.call("run", name="cmdjob")["run_id"]
        wait_for(lambda: f"start {py_run}" in runs_file.read_text(), what="the Python run to start")
        wait_for(
            lambda: [r for r in d.client.call("runs", name="cmdjob")["runs"] if r["state"] == "running"],
            what="the command run to be running",
        )
        marker = instance_marker(py)
        ours = processes_with_marker(marker)
        # py, pyjob, sh and its two sleeps, the command run: at least 6 processes of this instance.
        assert len(ours) >= 6, ours
        guard = [
            p for p in psutil.Process(d.pid).children() if "supervise.supervisor.daemon.guard" in " ".join(p.cmdline())
        ]
        assert len(guard) == 1
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        # pdeathsig is immediate; the orphan guard gives commands 1 s after SIGTERM before SIGKILL.
        wait_for(
            lambda: not processes_with_marker(marker),
            timeout_s=10,
            what="every worker of the killed supervisor to exit",
        )
        wait_for(lambda: not alive(guard[0].pid), timeout_s=5, what="the orphan guard to exit")
    finally:
        stop_daemon(d)

    d2 = start_daemon(config)
    try:
        runs = {r["run_id"]: r for r in d2.client.call("runs", limit=100)["runs"]}
        for run_id in (py_run, cmd_run):
            assert runs[run_id]["state"] == "lost", runs[run_id]
            assert "supervisor stopped" in str(runs[run_id]["reason"])
        d2.wait_running_pid("py")
    finally:
        stop_daemon(d2)


def test_f13_a_reaped_worker_is_never_signalled_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid is only signalled through its `Worker` while unreaped, when it cannot have been reused.

    Real pid reuse needs a pid namespace; what is testable is the rule that makes it harmless:
    the exit is observed (pidfd) while the process is still a zombie holding its pid and group id,
    the group is signalled then, and after the reap the `Worker` refuses to signal anything.
    """
    sent: list[tuple[str, int, int]] = []
    real_killpg, real_pidfd_send = os.killpg, signal.pidfd_send_signal

    def killpg(pgid: int, sig: int) -> None:
        sent.append(("killpg", pgid, sig))
        real_killpg(pgid, sig)

    def pidfd_send_signal(fd: int, sig: int, *args: object) -> None:
        sent.append(("pidfd", fd, sig))
        real_pidfd_send(fd, sig, *args)

    monkeypatch.setattr(os, "killpg", killpg)
    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        exits: list[tuple[int | None, int | None, bool]] = []

        def on_exit(worker: Worker, code: int | None, sig: int | None) -> None:
            exits.append((code, sig, worker.exited))
            done.set()

        request = SpawnRequest(argv=["sleep", "1000"], env=dict(os.environ), cwd=tmp_path, user=None, umask=None)
        worker = spawn(loop, request, RotatingLog(tmp_path / "w.log", max_bytes=1 << 20, backups=0), on_exit)
        pid = worker.pid
        os.kill(pid, signal.SIGKILL)
        # Nothing but the worker's pidfd reader may reap: until the loop runs it, the pid stays a zombie.
        wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout_s=5, what="a zombie")
        worker.signal_group(signal.SIGTERM)  # still ours: the zombie reserves the pid and the group id
        assert sent[-1] == ("killpg", pid, signal.SIGTERM)
        await asyncio.wait_for(done.wait(), 5)
        assert exits == [(None, signal.SIGKILL, True)]
        assert ("killpg", pid, signal.SIGKILL) in sent  # the group, before the reap
        with pytest.raises(psutil.NoSuchProcess):
            psutil.Process(pid).status()  # reaped: the pid is free for anyone now
        count = len(sent)
        worker.signal_group(signal.SIGTERM)
        worker.signal_group(signal.SIGKILL)
        assert len(sent) == count, "a reaped worker's pid was signalled"

    asyncio.run(scenario())


def test_f14_no_fd_leak_over_200_restarts_and_workers_get_only_stdio(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "churn": {
                "command": ["true"],
                "restart": "always",
                "start_timeout": "0s",
                "backoff": "0s",
                "max_restarts": 100_000,
                "restart_window": "1s",
            },
            "idle": {"command": ["sleep", "1000"], "start_timeout": "0s"},
        }
    )
    wait_for(lambda: d.service("churn")["restarts"] >= 20, what="20 restarts (warm-up)")
    before = fd_count(d.pid)
    start = d.service("churn")["restarts"]
    wait_for(lambda: d.service("churn")["restarts"] >= start + 200, timeout_s=60, what="200 more restarts")
    d.client.call("stop", name="churn")
    after = fd_count(d.pid)
    # Each restart opens a pipe and a pidfd and must close both; allow a few for sockets and the sampler.
    assert after <= before + 4, f"fds went from {before} to {after} over 200 restarts"

    pid = d.wait_running_pid("idle")
    fd_dir = Path(f"/proc/{pid}/fd")
    assert sorted(os.listdir(fd_dir), key=int) == ["0", "1", "2"]
    assert os.readlink(fd_dir / "0") == "/dev/null"
    assert os.readlink(fd_dir / "1") == os.readlink(fd_dir / "2")
    assert os.readlink(fd_dir / "1").startswith("pipe:")
