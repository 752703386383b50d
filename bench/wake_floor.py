"""The machine's floor for many processes due at the same instant, without supervise.

    python -m bench.wake_floor [--procs 100] [--work-us 0 100 200] [--ticks 10]

The interval-lateness scenario (`python -m bench --only supervise --scenario schedule`)
starts 100 one-second jobs at the same instants, each in its own worker process. This
measures what the operating system alone allows for that shape: P bare Python processes,
each with one thread that sleeps until the next whole second (a timed condition wait,
as a worker's run thread does), stamps the time as it wakes, then burns W µs of CPU (the
work a process does around a run: its target, its reports, its channel). Reported per W:
the lateness of the stamps at each tick, p50 / p99 over the P processes, as the median over
the ticks (a tick disturbed by something else on the machine does not decide it), and the
worst tick's p99. All processes are started and ready before the first tick.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, threading, time
first, ticks, work_s = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
cond = threading.Condition()
late = []
ready = time.time()
for i in range(ticks):
    due = first + i
    with cond:
        while (left := due - time.time()) > 0:
            cond.wait(left)
    late.append(time.time() - due)
    end = time.perf_counter() + work_s
    while time.perf_counter() < end:
        pass
print(json.dumps({"ready": ready, "late": late}))
"""

START_AHEAD_S = 5.0  # every process is up (an interpreter start each) well before the first tick


def measure(procs: int, work_us: float, ticks: int) -> list[list[float]]:
    """Per tick, the sorted latenesses in seconds of the stamps of `procs` processes."""
    first = float(int(time.time() + START_AHEAD_S) + 1)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(first), str(ticks), str(work_us / 1e6)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    per_process: list[list[float]] = []
    for child in children:
        out, _ = child.communicate(timeout=ticks + START_AHEAD_S + 60)
        report = json.loads(out)
        if report["ready"] > first - 0.5:
            raise RuntimeError("a process was not ready half a second before the first tick (a loaded machine?)")
        per_process.append(report["late"])
    return [sorted(late[i] for late in per_process) for i in range(ticks)]


def _at(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=100)
    ap.add_argument("--work-us", type=float, nargs="+", default=[0.0, 100.0, 200.0])
    ap.add_argument("--ticks", type=int, default=10)
    args = ap.parse_args()
    for work_us in args.work_us:
        ticks = measure(args.procs, work_us, args.ticks)
        p50s = sorted(_at(t, 0.5) for t in ticks)
        p99s = sorted(_at(t, 0.99) for t in ticks)
        print(
            f"{args.procs} processes, {work_us:g} µs of work each, {len(ticks)} ticks: "
            f"p50 {_at(p50s, 0.5) * 1e3:.1f} ms, p99 {_at(p99s, 0.5) * 1e3:.1f} ms (medians over the ticks); "
            f"worst tick's p99 {p99s[-1] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
