"""What only supervise does: notice a hung Python worker by its missing heartbeats.

A hang is simulated with SIGSTOP on the worker (it stays alive but sends nothing).
Measured from the SIGSTOP: when the supervisor's status leaves RUNNING (detection)
and when a new worker runs (after stop_timeout, since a stopped process ignores SIGTERM).
Fire-time lateness of interval jobs needs scheduling, which the config does not have yet.
"""

from __future__ import annotations

from bench.plan import Plan
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
    restart = Row(
        "hang (supervise only)", "hung worker replaced (new one running)", "s"
    )
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
    log(
        f"hang: detected after {sorted(detect.samples[system.name])[len(detect.samples[system.name]) // 2]:.3f} s"
    )
    sched = Row("schedule (supervise only)", "interval job fire lateness", "s")
    sched.notes[system.name] = "n/a: no scheduling yet"
    return [detect, restart, sched]
