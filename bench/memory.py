"""`python -m bench.memory [--n N] [--kind sleep|python] [--python EXE] [--maps]`: what the idle daemon holds.

Starts `python -m supervise.supervisor start` on the bench's config of N services
(bench/sys_supervise.py), waits until a client sees all RUNNING, lets it settle,
then prints one JSON line: VmRSS, RssAnon and RssFile of the daemon (not its
workers), its threads, its CPU time so far, the wall time to all RUNNING and the
load average. `--maps` adds the resident kB of each mapping, summed by file name
(`[anon]` for unnamed anonymous memory). `--python` runs the daemon with another
interpreter (another tree's venv), for before/after pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import procs, sys_supervise
from bench.workload import Workload

SETTLE_S = 3.0


def resident_by_mapping(pid: int) -> dict[str, int]:
    """kB resident per mapped file name (basename), from /proc/PID/smaps."""
    found: Counter[str] = Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
            name = os.path.basename(fields[5]) if len(fields) > 5 else "[anon]"
        elif fields[0] == "Rss:":
            found[name] += int(fields[1])
    return dict(found.most_common())


def measure(python: str, n: int, kind: str, workdir: Path, *, maps: bool = False) -> dict[str, object]:
    config = {"heartbeat_interval": "1s", "heartbeat_timeout": "30s"} if kind == "python" else {}
    sys_supervise.write_config(workdir, Workload(n, kind), **config)
    started = time.monotonic()
    with open(workdir / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            [python, "-m", "supervise.supervisor", "start", str(workdir / "supervise.toml")],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        ready_s = _wait_running(workdir, n, proc, started)
        time.sleep(SETTLE_S)
        status = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        result: dict[str, object] = {
            "n": n,
            "kind": kind,
            "python": python,
            "rss_kb": int(status["VmRSS"].split()[0]),
            "anon_kb": int(status["RssAnon"].split()[0]),
            "file_kb": int(status["RssFile"].split()[0]),
            "threads": int(status["Threads"]),
            "cpu_s": round(procs.cpu_seconds(proc.pid), 3),
            "ready_s": round(ready_s, 3),
            "load": os.getloadavg()[0],
        }
        if maps:
            result["maps_kb"] = resident_by_mapping(proc.pid)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_running(workdir: Path, n: int, proc: subprocess.Popen[bytes], started: float) -> float:
    from supervise.protocol import Client

    with Client(sys_supervise.endpoint(workdir), timeout_s=5.0) as client:
        while time.monotonic() - started < 300:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode}; see {workdir}/daemon.log")
            try:
                services = client.call("status", retries=0)["services"]
            except Exception:  # noqa: BLE001 - not listening yet
                services = []
            if len(services) == n and all(s["state"] == "RUNNING" for s in services):
                return time.monotonic() - started
            time.sleep(0.05)
    raise SystemExit(f"not all {n} services RUNNING within 300 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="services (default 200)")
    ap.add_argument("--kind", choices=("sleep", "python"), default="sleep")
    ap.add_argument("--python", default=sys.executable, help="the daemon's interpreter (default: this one)")
    ap.add_argument("--maps", action="store_true", help="also the resident kB of each mapping")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sv-mem-", dir="/tmp"))  # ipc:// paths must stay short
    try:
        print(json.dumps(measure(args.python, args.n, args.kind, workdir, maps=args.maps)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
