"""Cold start of N services, and stop-all of them.

Cold start: from launching the daemon (just before `Popen`) until N workers are
alive in /proc (exec'd, not zombies) and the system's own client reports all N
services running with those pids. Stop-all: the client's stop-all call, until
it returned and every worker pid is gone. Each run launches a fresh daemon; the
systems take turns within a run, so drift hits them alike.
"""

from __future__ import annotations

from bench.plan import Plan
from bench.session import Session, System
from bench.table import Row
from bench.workload import Workload


def run(systems: list[System], plan: Plan, tag: str, log) -> list[Row]:
    rows = {n: Row("cold start", f"N={n} sleep services", "s") for n in plan.cold_ns}
    n_max = max(plan.cold_ns)
    stop = Row("stop-all", f"N={n_max} sleep services", "s")
    if n_max >= 200:
        rows[n_max].target = ("<= 1.0 s", lambda v: v <= 1.0)
        stop.target = ("<= 0.15 s", lambda v: v <= 0.15)
    for n in plan.cold_ns:
        for i in range(plan.runs):
            for system in systems:
                with Session(system, Workload(n), tag) as s:
                    ready = s.wait_ready()
                    rows[n].samples.setdefault(system.name, []).append(ready["at"] - s.t0)
                    if n == n_max:
                        result = s.call("stop_all", pids=ready["pids"], timeout=60)
                        if result["left"]:
                            raise RuntimeError(f"{system.name}: stop-all left {result['left']}")
                        stop.samples.setdefault(system.name, []).append(result["seconds"])
            log(
                f"cold start N={n} run {i + 1}/{plan.runs}: "
                + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows[n].samples.items())
            )
    return [*rows.values(), stop]
