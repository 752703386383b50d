"""Restart latency after SIGKILL, and the control round trip (library and CLI), at N services.

One daemon per system with N `sleep` services, all running:
- status through the system's own client library ("status of everything": our
  `status`, Circus's `status`, supervisord's `getAllProcessInfo`), timed in the agent;
- the system's CLI `status`, end to end (a fresh process each time: import time dominates);
- SIGKILL one worker (round robin over the services), then the time until a new live
  worker of it appears (watched in /proc, so the watching does not wake the daemon),
  which the client must then report as that service's pid.
"""

from __future__ import annotations

import time

from bench.plan import Plan
from bench.session import Session, System
from bench.table import Row
from bench.workload import Workload


def run(systems: list[System], plan: Plan, tag: str, log) -> list[Row]:
    n = plan.n
    lib50 = Row("control", f"status of {n}, library, p50", "s", "p50")
    lib99 = Row("control", f"status of {n}, library, p99", "s", "p99")
    cli = Row("control", "`status` CLI, end to end", "s")
    r50 = Row(
        "restart",
        "SIGKILL → new worker, p50",
        "s",
        "p50",
        target=("<= 10 ms", lambda v: v <= 0.010),
    )
    r95 = Row(
        "restart",
        "SIGKILL → new worker, p95",
        "s",
        "p95",
        target=("<= 25 ms", lambda v: v <= 0.025),
    )
    rmax = Row("restart", "SIGKILL → new worker, max", "s", "max")
    if n >= 200:
        lib50.target = ("< 1 ms", lambda v: v < 0.001)
        cli.target = ("<= 80 ms", lambda v: v <= 0.080)  # p50 (issue 19)
    for system in systems:
        with Session(system, Workload(n), tag) as s:
            s.wait_ready()
            time.sleep(1.0)
            calls = s.call("status_calls", count=plan.status_calls, max_s=plan.status_max_s)
            lib50.samples[system.name] = lib99.samples[system.name] = calls
            cli.samples[system.name] = [s.cli() for _ in range(plan.cli_runs)]
            names = s.wl.names
            samples = []
            for i in range(plan.restart_samples):
                samples.append(
                    s.call(
                        "restart_sample",
                        daemon=s.pid,
                        name=names[i % n],
                        timeout=30,
                        comm="sleep",
                    )
                )
                time.sleep(0.2)
            r50.samples[system.name] = r95.samples[system.name] = rmax.samples[system.name] = samples
            log(
                f"latency {system.name}: status p50 {sorted(calls)[len(calls) // 2] * 1000:.2f} ms "
                f"({len(calls)} calls),"
                f" restart p50 {sorted(samples)[len(samples) // 2] * 1000:.1f} ms"
            )
    return [r50, r95, rmax, lib50, lib99, cli]
