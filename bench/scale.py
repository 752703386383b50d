"""The scale curve: cold start, status, idle CPU and RSS of supervise at N = 200, 1 000 and 2 000.

supervise alone (and `before`, when the run compares two source trees): the peers'
cold start of 2 000 takes tens of seconds per run, so they are left out and the
table says so. For each N and each run, a fresh daemon with N `sleep` services:
the cold start (as in `lifecycle.py`); in the last run also `status` through the
library (p50 of up to 100 calls), the daemon's idle CPU (its threads' schedstat
over the window, in slices) and its RSS. The last rows are the cost of one more
service, the slope between the smallest and the largest N: milliseconds of cold
start, microseconds of `status`, kilobytes of RSS.
"""

from __future__ import annotations

import time

from bench import procs
from bench.plan import Plan
from bench.session import Session, System
from bench.table import Row
from bench.workload import Workload

SETTLE_S = 3.0
SUPERVISE_ONLY = ("supervise", "before")
SKIPPED = "not run (too slow at this N)"


def run(systems: list[System], plan: Plan, tag: str, log) -> list[Row]:
    ours = [s for s in systems if s.name in SUPERVISE_ONLY]
    peers = [s.name for s in systems if s.name not in SUPERVISE_ONLY]
    rows: list[Row] = []
    by_n: dict[int, dict[str, Row]] = {}
    for n in plan.scale_ns:
        cold = Row("scale", f"N={n} sleep: cold start", "s")
        status = Row("scale", f"N={n} sleep: status, library, p50", "s", "p50")
        cpu = Row("scale", f"N={n} sleep: idle CPU", "%")
        rss = Row("scale", f"N={n} sleep: RSS", "MB")
        if n == 2000:
            cold.target = ("<= 2 s", lambda v: v <= 2.0)
            status.target = ("<= 5 ms", lambda v: v <= 0.005)
            cpu.target = ("<= 0.5 %", lambda v: v <= 0.5)
            rss.target = ("<= 70 MB", lambda v: v <= 70)
        by_n[n] = {"cold": cold, "status": status, "cpu": cpu, "rss": rss}
        for i in range(plan.scale_runs):
            last = i == plan.scale_runs - 1
            for system in ours:
                with Session(system, Workload(n), tag, agent_timeout_s=60) as s:
                    ready = s.wait_ready(timeout=600)
                    cold.samples.setdefault(system.name, []).append(ready["at"] - s.t0)
                    if not last:
                        continue
                    time.sleep(SETTLE_S)
                    status.samples[system.name] = s.call("status_calls", count=100, max_s=10.0)
                    time.sleep(1.0)  # the calls' own cost out of the CPU window
                    cpu.samples[system.name], rss.samples[system.name] = _idle(s.pid, plan)
            log(
                f"scale N={n} run {i + 1}/{plan.scale_runs}: "
                + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in cold.samples.items())
            )
        for row in by_n[n].values():
            row.notes.update({p: SKIPPED for p in peers})
            rows.append(row)
    rows += _per_service(by_n, [s.name for s in ours], peers)
    return rows


def _idle(pid: int, plan: Plan) -> tuple[list[float], list[float]]:
    cpu, rss = [], []
    last_cpu, last_t = procs.cpu_seconds(pid), time.monotonic()
    for _ in range(max(1, round(plan.scale_idle_s / plan.idle_slice_s))):
        time.sleep(plan.idle_slice_s)
        c, t = procs.cpu_seconds(pid), time.monotonic()
        cpu.append(100 * (c - last_cpu) / (t - last_t))
        rss.append(procs.rss_bytes(pid) / 2**20)
        last_cpu, last_t = c, t
    return cpu, rss


def _per_service(by_n: dict[int, dict[str, Row]], names: list[str], peers: list[str]) -> list[Row]:
    """The slope between the smallest and the largest N, per extra service."""
    lo, hi = min(by_n), max(by_n)
    if lo == hi:
        return []
    out = []
    for key, label, unit, scale in (
        ("cold", "cold start per extra service", "ms", 1000.0),
        ("status", "status per extra service", "us", 1e6),
        ("rss", "RSS per extra service", "KB", 1024.0),
    ):
        row = Row("scale", f"{label} ({lo}→{hi})", unit)
        for name in names:
            a, b = by_n[lo][key].value(name), by_n[hi][key].value(name)
            if a is not None and b is not None:
                row.samples[name] = [scale * (b - a) / (hi - lo)]
        row.notes.update({p: SKIPPED for p in peers})
        out.append(row)
    return out
