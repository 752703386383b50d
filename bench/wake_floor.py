"""The machine's floor for many processes due at the same instant, without supervise.

    python -m bench.wake_floor [--procs 100] [--work-us 0 100 200] [--ticks 10]

The interval-lateness scenario (`python -m bench --only supervise --scenario schedule`)
starts 100 one-second jobs at the same instants, each in its own worker process. This
measures what the operating system alone allows for that shape: P bare Python processes,
each with one thread that sleeps until the next whole second (a timed condition wait,
as a worker's run thread does), stamps the time as it wakes, then burns W µs of CPU (the
work a process does around a run: its target, its reports, its channel). Reported per W:
the lateness of the stamps, p50 / p99 / max over every process and tick. All processes
are started and ready before the first tick, and each tick is a whole second apart.
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


def measure(procs: int, work_us: float, ticks: int) -> list[float]:
    """Latenesses in seconds of every stamp of `procs` processes over `ticks` whole seconds."""
    first = float(int(time.time() + START_AHEAD_S) + 1)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(first), str(ticks), str(work_us / 1e6)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    late: list[float] = []
    for child in children:
        out, _ = child.communicate(timeout=ticks + START_AHEAD_S + 60)
        report = json.loads(out)
        if report["ready"] > first - 0.5:
            raise RuntimeError("a process was not ready half a second before the first tick (a loaded machine?)")
        late += report["late"]
    return sorted(late)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=100)
    ap.add_argument("--work-us", type=float, nargs="+", default=[0.0, 100.0, 200.0])
    ap.add_argument("--ticks", type=int, default=10)
    args = ap.parse_args()
    for work_us in args.work_us:
        late = measure(args.procs, work_us, args.ticks)
        p50, p99 = late[len(late) // 2], late[min(len(late) - 1, int(len(late) * 0.99))]
        print(
            f"{args.procs} processes, {work_us:g} µs of work each: "
            f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {late[-1] * 1e3:.2f} ms ({len(late)} stamps)"
        )


if __name__ == "__main__":
    main()
