"""URL calls at their datetime, many of them: the task-throughput scenarios (supervise only).

`urls`: a local HTTP sink (aiohttp, in a thread of this process) records every
request with its arrival time and Idempotency-Key; one `action = "http"` service;
K one-shot runs added through the `Client` for a window starting 10 s ahead,
spread evenly over 5 s. Optionally the service's worker is SIGKILLed during the
burst. Reported: insert rate, calls received, distinct keys, lateness (arrival at
the sink minus the run's datetime) p50/p99/max, final states (read from the store
after the daemon stopped), the daemon's CPU time and peak RSS.

`pending`: P one-shots spread over the next day, added through the `Client`;
then the daemon's RSS, `status` round trips, and a restart with them in the store
(SIGTERM, start, until `status` answers).

    python -m bench.throughput urls --k 10000 [--kills 2]
    python -m bench.throughput pending --p 100000 [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.procs import TAG_VAR, kill_tagged
from bench.table import Row, percentile

SCENARIO = "url calls (supervise only)"


@dataclass
class Sink:
    """An aiohttp server on its own loop and thread, recording (key, arrival time)."""

    arrivals: list[tuple[str, float]] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: Any = None

    def start(self) -> None:
        from aiohttp import web

        ready = threading.Event()

        async def hook(request: web.Request) -> web.Response:
            self.arrivals.append((request.headers.get("Idempotency-Key", ""), time.time()))
            await request.read()
            return web.Response(text="ok")

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}/hook"
            ready.set()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        threading.Thread(target=run, name="bench-sink", daemon=True).start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


class Daemon:
    """`supervise start` on a generated config, with a client."""

    def __init__(self, workdir: Path, tag: str, services: str) -> None:
        self.workdir = workdir
        self.tag = tag
        lines = ["[supervisor]", 'state_dir = "s"', 'sample_interval = "5s"', services]
        (workdir / "supervise.toml").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    def start(self, timeout_s: float = 120) -> float:
        """Start it; seconds until `status` answered with every service RUNNING."""
        from supervise.protocol import Client

        began = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervise.supervisor",
                "start",
                str(self.workdir / "supervise.toml"),
                "--log-level",
                "warning",
            ],
            env={**os.environ, TAG_VAR: self.tag},
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "daemon.err", "ab"),  # noqa: SIM115 - the child keeps it
        )
        self.client = Client(f"ipc://{self.workdir}/s/control.sock", timeout_s=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if all(s["state"] == "RUNNING" for s in self.client.call("status")["services"]):
                    return time.monotonic() - began
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            time.sleep(0.02)
        raise RuntimeError("the daemon did not come up")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_tagged(self.tag)
            self.proc = None

    def worker_pid(self, name: str) -> int | None:
        svc = self.client.call("status", name=name)["services"][0]
        return int(svc["pid"]) if svc["pid"] and svc["state"] == "RUNNING" else None


def _insert(client: Any, name: str, times: list[datetime], batch: int) -> tuple[dict[str, datetime], float]:
    """Add one-shots at `times` through the Client: one request each, or `batch` per request."""
    ids: dict[str, datetime] = {}
    began = time.monotonic()
    if batch <= 1:
        for at in times:
            ids[str(client.call("schedule", name=name, at=at.isoformat())["run_id"])] = at
    else:
        for start in range(0, len(times), batch):
            chunk = times[start : start + batch]
            got = client.call("schedule", name=name, runs=[{"at": at.isoformat()} for at in chunk])["run_ids"]
            ids.update(zip(map(str, got), chunk, strict=True))
    return ids, len(times) / (time.monotonic() - began)


def urls(k: int, kills: int, tag: str, log: Any, batch: int = 1) -> tuple[list[Row], dict[str, Any]]:
    """K one-shot URL calls over 5 s, 10 s ahead; `kills` SIGKILLs of the worker during the burst."""
    sink = Sink()
    sink.start()
    workdir = Path(tempfile.mkdtemp(prefix="sv-urls-", dir="/tmp"))
    service = f'[services.hook]\naction = "http"\nurl = "{sink.url}"\nmethod = "POST"\nbody = "{{}}"\n'
    daemon = Daemon(workdir, tag, service)
    label = f"{k} one-shots over 5 s" + (f", worker SIGKILLed x{kills}" if kills else "")
    try:
        daemon.start()
        proc = psutil.Process(daemon.proc.pid)  # type: ignore[union-attr]
        start = datetime.now(UTC) + timedelta(seconds=10)
        times = [start + timedelta(seconds=5 * i / k) for i in range(k)]
        ids, insert_rate = _insert(daemon.client, "hook", times, batch)
        log(f"urls: {k} inserted at {insert_rate:.0f}/s")
        # The sink stamps arrivals in this process: what setting up the burst made (10 000
        # times and ids) is moved out of the collector's full passes, which would otherwise
        # pause the sink for 10 to 25 ms at a time and stamp those arrivals late.
        gc.collect()
        gc.freeze()
        cpu0 = proc.cpu_times()
        worker_pid = daemon.worker_pid("hook")
        worker = psutil.Process(worker_pid) if worker_pid else None
        worker_cpu0 = worker.cpu_times() if worker is not None else None
        own_cpu0 = psutil.Process().cpu_times()
        peak_rss = proc.memory_info().rss
        kill_at = [start + timedelta(seconds=1.5 + 2 * i) for i in range(kills)]
        deadline = time.monotonic() + (start - datetime.now(UTC)).total_seconds() + 5 + 60
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, proc.memory_info().rss)
            if kill_at and datetime.now(UTC) >= kill_at[0]:
                kill_at.pop(0)
                pid = daemon.worker_pid("hook")
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    log(f"urls: SIGKILLed worker {pid}")
            if datetime.now(UTC) > start + timedelta(seconds=5) and not kill_at:
                sched = daemon.client.call("status", name="hook")["services"][0]["schedule"]
                if sched["queued"] == 0 and sched["in_flight"] == 0 and len({a for a, _ in sink.arrivals}) >= k:
                    break
            time.sleep(0.05)
        cpu1 = proc.cpu_times()
        own_cpu1 = psutil.Process().cpu_times()
        worker_cpu_s = None
        if not kills and worker is not None and worker_cpu0 is not None:
            worker_cpu1 = worker.cpu_times()
            worker_cpu_s = (worker_cpu1.user + worker_cpu1.system) - (worker_cpu0.user + worker_cpu0.system)
    finally:
        daemon.stop()
        sink.stop()
        gc.unfreeze()
    db = sqlite3.connect(workdir / "s" / "history.db")
    states = dict(db.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall())
    ok_keys = db.execute("SELECT count(DISTINCT coalesce(key, run_id)) FROM runs WHERE state = 'succeeded'").fetchone()[
        0
    ]
    starts = sorted(
        datetime.fromisoformat(a).timestamp() - datetime.fromisoformat(n).timestamp()
        for a, n in db.execute(
            "SELECT started_at, nominal_time FROM runs WHERE origin = 'oneshot' AND started_at IS NOT NULL"
        )
    )
    durations = sorted(
        d / 1000
        for (d,) in db.execute(
            "SELECT (julianday(finished_at) - julianday(started_at)) * 86400000 FROM runs WHERE state = 'succeeded'"
        )
    )
    db.close()
    shutil.rmtree(workdir, ignore_errors=True)
    first: dict[str, float] = {}
    for key, t in sink.arrivals:
        first.setdefault(key, t)
    late = sorted(first[key] - at.timestamp() for key, at in ids.items() if key in first)
    counts = Counter(key for key, _ in sink.arrivals)
    figures = {
        "k": k,
        "kills": kills,
        "insert_per_s": insert_rate,
        "calls": len(sink.arrivals),
        "distinct_keys": len(counts),
        "keys_called_twice_or_more": sum(1 for n in counts.values() if n > 1),
        "missing_keys": sum(1 for key in ids if key not in counts),
        "lateness_p50_s": percentile(late, 50) if late else None,
        "lateness_p99_s": percentile(late, 99) if late else None,
        "lateness_max_s": late[-1] if late else None,
        "start_lateness_p50_s": percentile(starts, 50) if starts else None,
        "start_lateness_p99_s": percentile(starts, 99) if starts else None,
        "call_duration_p50_s": percentile(durations, 50) if durations else None,
        "call_duration_p99_s": percentile(durations, 99) if durations else None,
        "states": states,
        "occurrences_succeeded": ok_keys,
        "daemon_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "daemon_peak_rss_mb": peak_rss / 1e6,
        "worker_cpu_s": worker_cpu_s,
        "sink_and_client_cpu_s": (own_cpu1.user + own_cpu1.system) - (own_cpu0.user + own_cpu0.system),
    }
    log(f"urls: {figures}")
    rows = []
    for stat, key in (("p50", "lateness_p50_s"), ("p99", "lateness_p99_s"), ("max", "lateness_max_s")):
        target = ("<= 50 ms", lambda v: v <= 0.050) if stat == "p99" and k == 10_000 and not kills else None
        row = Row(SCENARIO, f"lateness {stat}, {label}", "s", stat="median", target=target)
        row.samples["supervise"] = [figures[key]] if figures[key] is not None else []
        rows.append(row)
    for unit, name, value, target in (
        ("/s", "insert rate through the Client", insert_rate, None),
        ("n", "URLs called (distinct keys)", len(counts), (f"= {k}", lambda v: v == k)),
        ("n", "occurrences that ended succeeded", ok_keys, (f"= {k}", lambda v: v == k)),
        ("MB", "daemon peak RSS", peak_rss / 1e6, None),
    ):
        row = Row(SCENARIO, f"{name}, {label}", unit, target=target)
        row.samples["supervise"] = [value]
        rows.append(row)
    return rows, figures


def pending(p: int, tag: str, log: Any, batch: int = 1) -> tuple[list[Row], dict[str, Any]]:
    """P pending one-shots over the next day: RSS, status latency, restart time."""
    workdir = Path(tempfile.mkdtemp(prefix="sv-pend-", dir="/tmp"))
    service = '[services.hook]\naction = "http"\nurl = "http://127.0.0.1:9/never"\n'
    daemon = Daemon(workdir, tag, service)
    try:
        daemon.start()
        rss0 = psutil.Process(daemon.proc.pid).memory_info().rss  # type: ignore[union-attr]
        start = datetime.now(UTC) + timedelta(hours=1)
        times = [start + timedelta(seconds=86_400 * i / p) for i in range(p)]
        _, insert_rate = _insert(daemon.client, "hook", times, batch)
        log(f"pending: {p} inserted at {insert_rate:.0f}/s")
        time.sleep(2)  # the writer catches up
        rss = psutil.Process(daemon.proc.pid).memory_info().rss  # type: ignore[union-attr]
        lat = []
        for _ in range(50):
            began = time.perf_counter()
            daemon.client.call("status")
            lat.append(time.perf_counter() - began)
        daemon.stop()
        restart_s = daemon.start()
        rss_after = psutil.Process(daemon.proc.pid).memory_info().rss  # type: ignore[union-attr]
        listed = len(daemon.client.call("runs", name="hook", state="pending", limit=10)["runs"])
    finally:
        daemon.stop()
    db = sqlite3.connect(workdir / "s" / "history.db")
    stored = db.execute("SELECT count(*) FROM runs WHERE state = 'pending'").fetchone()[0]
    db.close()
    shutil.rmtree(workdir, ignore_errors=True)
    figures = {
        "p": p,
        "insert_per_s": insert_rate,
        "stored_pending": stored,
        "rss_before_mb": rss0 / 1e6,
        "rss_mb": rss / 1e6,
        "status_p50_s": percentile(lat, 50),
        "status_p99_s": percentile(lat, 99),
        "restart_s": restart_s,
        "rss_after_restart_mb": rss_after / 1e6,
        "listed_after_restart": listed,
    }
    log(f"pending: {figures}")
    label = f"{p} pending one-shots over a day"
    rows = []
    million = p >= 1_000_000
    for unit, name, value, stat, target in (
        ("/s", "insert rate through the Client", insert_rate, "median", (">= 5 000/s", lambda v: v >= 5000)),
        ("MB", "daemon RSS", rss / 1e6, "median", ("<= 100 MB", lambda v: v <= 100)),
        ("s", "status", percentile(lat, 50), "median", ("<= 20 ms", lambda v: v <= 0.020)),
        ("s", "restart until status answers", restart_s, "median", ("<= 3 s", lambda v: v <= 3.0)),
    ):
        row = Row(SCENARIO, f"{name}, {label}", unit, stat=stat, target=target if million else None)
        row.samples["supervise"] = [value]
        rows.append(row)
    return rows, figures


def run(plan: Any, tag: str, log: Any) -> list[Row]:
    """The scenario as `python -m bench` runs it: K = 10 000 (1 000 at N = 50, 200 below), added
    1 000 per request, then the same with the worker SIGKILLed twice (not below N = 50); in a full
    run also 1 000 000 pending one-shots over a day."""
    k = 10_000 if plan.n >= 200 else 1_000 if plan.n >= 50 else 200
    rows, _ = urls(k, 0, tag, log, batch=1000)
    if plan.n >= 50:
        more, _ = urls(k, 2, tag, log, batch=1000)
        rows += more
    if plan.n >= 200:
        more, _ = pending(1_000_000, tag, log, batch=1000)
        rows += more
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    ap.add_argument("what", choices=("urls", "pending"))
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=0)
    ap.add_argument("--p", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1, help="one-shots per schedule request (default 1: one request each)")
    args = ap.parse_args(argv)
    tag = f"tp{os.getpid()}"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.what == "urls":
            _, figures = urls(args.k, args.kills, tag, log, args.batch)
        else:
            _, figures = pending(args.p, tag, log, args.batch)
    finally:
        kill_tagged(tag)
    for key, value in figures.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
