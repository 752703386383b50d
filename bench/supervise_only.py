"""What only supervise does: notice a hung Python worker by its missing heartbeats.

A hang is simulated with SIGSTOP on the worker (it stays alive but sends nothing).
Measured from the SIGSTOP: when the supervisor's status leaves RUNNING (detection)
and when a new worker runs (after stop_timeout, since a stopped process ignores SIGTERM).
Fire-time lateness: N services each run a Python job every second in their warm
worker; lateness is a run's start (recorded by the supervisor when the worker reports
`run_started`) minus its nominal time, read back from the run history.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.plan import Plan
from bench.procs import TAG_VAR, kill_tagged
from bench.session import Session, System
from bench.table import Row
from bench.workload import Workload

INTERVAL, TIMEOUT = "250ms", "1s"


def hang(system: System, plan: Plan, tag: str, log) -> list[Row]:
    detect = Row(
        "hang (supervise only)",
        f"detected; heartbeat {INTERVAL}, timeout {TIMEOUT}",
        "s",
    )
    restart = Row("hang (supervise only)", "hung worker replaced (new one running)", "s")
    n = min(plan.hang_samples, 5)
    with Session(
        system,
        Workload(n, "python"),
        tag,
        heartbeat_interval=INTERVAL,
        heartbeat_timeout=TIMEOUT,
    ) as s:
        s.wait_ready(timeout=120)
        for i in range(plan.hang_samples):
            result = s.call("hang_sample", name=s.wl.names[i % n], timeout=30)
            detect.samples.setdefault(system.name, []).append(result["detected"])
            restart.samples.setdefault(system.name, []).append(result["restarted"])
            s.wait_ready(timeout=60)
    log(f"hang: detected after {sorted(detect.samples[system.name])[len(detect.samples[system.name]) // 2]:.3f} s")
    return [detect, restart]


JOB = "def tick(ctx):\n    pass\n"


def lateness(system: System, plan: Plan, tag: str, log) -> list[Row]:
    """Fire-time lateness of `jobs` one-second interval jobs over `window_s`."""
    from supervise.protocol import Client

    jobs, window_s = (100, 20.0) if plan.n >= 200 else (min(plan.n, 20), 6.0)
    p50 = Row("schedule (supervise only)", f"fire lateness p50, {jobs} jobs every 1 s", "s", stat="p50")
    p99 = Row(
        "schedule (supervise only)",
        f"fire lateness p99, {jobs} jobs every 1 s",
        "s",
        stat="p99",
        target=("<= 10 ms", lambda v: v <= 0.010) if jobs == 100 else None,
    )
    workdir = Path(tempfile.mkdtemp(prefix="sv-late-", dir="/tmp"))
    (workdir / "benchjob.py").write_text(JOB)
    lines = ["[supervisor]", 'state_dir = "s"', 'sample_interval = "5s"']
    for i in range(jobs):
        lines += [f"[services.j{i:03d}]", 'target = "benchjob:tick"', 'every = "1s"', 'heartbeat_timeout = "30s"']
    (workdir / "supervise.toml").write_text("\n".join(lines) + "\n")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervise.supervisor",
            "start",
            str(workdir / "supervise.toml"),
            "--log-level",
            "warning",
        ],
        env={**os.environ, TAG_VAR: tag},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(f"ipc://{workdir}/s/control.sock", timeout_s=10)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if all(s["state"] == "RUNNING" for s in client.call("status")["services"]):  # type: ignore[index]
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        begin = time.time()
        time.sleep(window_s)
        runs = client.call("runs", limit=10_000)["runs"]  # type: ignore[index]
    finally:
        client.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_tagged(tag)
        shutil.rmtree(workdir, ignore_errors=True)
    late = sorted(
        datetime.fromisoformat(r["started_at"]).timestamp() - datetime.fromisoformat(r["nominal_time"]).timestamp()
        for r in runs
        if r["origin"] == "schedule"
        and r["started_at"]
        and r["nominal_time"]
        and datetime.fromisoformat(r["nominal_time"]).timestamp() >= begin
    )
    if not late:
        raise RuntimeError("no scheduled run was recorded")
    p50.samples[system.name] = p99.samples[system.name] = late
    log(f"lateness: {len(late)} runs, p50 {late[len(late) // 2] * 1000:.1f} ms, max {late[-1] * 1000:.1f} ms")
    return [p50, p99]
