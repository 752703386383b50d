"""`python -m bench.api [--tasks N] [--services N] [--tenant T]`: figures of the HTTP API of one supervise daemon.

- task creation through `POST /api/v1/tasks`, 16 requests in flight on one keep-alive session;
- `GET /api/v1/services` with N services, p50 and p95 of 200 sequential requests;
- fire lateness of tasks created through the API: 50 tasks due 2 s ahead call a local
  HTTP server, which notes when each call arrives (arrival - `at`, p50 and p95).

supervise alone, from the repository root with supervise installed in place; the daemon
and its workers are stopped at the end. Prints one line per figure. `run` is the same
measure as the "http api (supervise only)" scenario of `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.procs import TAG_VAR
from bench.table import Row
from supervise.protocol.client import Client
from supervise.supervisor.api.store import ApiStore, Role

IN_FLIGHT = 16
LATENESS_TASKS = 50
SCENARIO = "http api (supervise only)"


def http_address(client: Any, daemon: subprocess.Popen[bytes], timeout_s: float = 60) -> str:
    """The daemon's HTTP address (host:port) from `ping`, once it answers; raises if it died or timed out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return str(client.call("ping", retries=0)["http"])
        except Exception:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise
            time.sleep(0.2)


def _config(folder: Path, services: int) -> Path:
    lines = [
        "[supervisor]",
        'state_dir = "state"',
        'http = "127.0.0.1:0"',
        "tenant_max_pending_tasks = 1000000",
        "tenant_max_runs_per_minute = 1000000",
        'allow_addresses = ["127.0.0.1"]',  # the receiver is on loopback, which the address policy refuses
    ]
    for i in range(services):
        lines += [f"[services.s{i:03d}]", 'command = ["sleep", "100000"]']
    path = folder / "supervise.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _receiver(arrivals: dict[str, float]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrivals[self.headers.get("X-Supervise-Task", "?")] = time.time()
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        # The default listen backlog is 5: 50 calls arriving together would overflow it, and the kernel's
        # SYN retries (1 s, 3 s, 7 s) would be measured as the daemon's lateness.
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(
    base: str, token: str, tasks: int, services: int, receiver: str, arrivals: dict[str, float], pid: int
) -> dict[str, Any]:
    far = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.post(f"{base}/tasks", json={"url": receiver, "at": far}) as r:
            assert r.status == 201, await r.text()  # the first one also creates the task service
        latencies = []
        for _ in range(200):
            started = time.perf_counter()
            async with session.get(f"{base}/services") as r:
                await r.read()
            latencies.append((time.perf_counter() - started) * 1000)
        figures: dict[str, Any] = {"services_ms": latencies}
        print(
            f"GET /api/v1/services, {services} services:"
            f" p50 {_pct(latencies, 0.5):.1f} ms, p95 {_pct(latencies, 0.95):.1f} ms"
        )

        numbers = iter(range(tasks))

        async def create() -> None:
            for _ in numbers:
                async with session.post(f"{base}/tasks", json={"url": receiver, "at": far}) as r:
                    assert r.status == 201, await r.text()

        daemon = psutil.Process(pid)
        cpu0 = sum(daemon.cpu_times()[:2])
        started = time.perf_counter()
        await asyncio.gather(*(create() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
        cpu = sum(daemon.cpu_times()[:2]) - cpu0  # less swayed by other load on the machine than wall time
        figures["tasks_per_s"] = tasks / elapsed
        figures["daemon_cpu_us_per_task"] = cpu / tasks * 1e6
        print(
            f"POST /api/v1/tasks: {tasks} in {elapsed:.2f} s, {tasks / elapsed:.0f}/s"
            f" ({IN_FLIGHT} in flight, keep-alive); daemon CPU {cpu:.2f} s, {cpu / tasks * 1e6:.0f} µs a task"
        )

        due = datetime.now(UTC) + timedelta(seconds=2)
        ids = []
        for _ in range(LATENESS_TASKS):
            async with session.post(f"{base}/tasks", json={"url": receiver, "at": due.isoformat()}) as r:
                ids.append((await r.json())["id"])
        deadline = time.time() + 60
        while len([i for i in ids if i in arrivals]) < len(ids) and time.time() < deadline:
            await asyncio.sleep(0.1)
        late = [(arrivals[i] - due.timestamp()) * 1000 for i in ids if i in arrivals]
        figures["lateness_ms"] = late
        figures["arrived"] = len(late)
        if late:
            print(
                f"fire lateness of {len(late)}/{len(ids)} API tasks due together: p50 {statistics.median(late):.0f} ms,"
                f" p95 {_pct(late, 0.95):.0f} ms, max {max(late):.0f} ms"
            )
        else:
            print(f"fire lateness: none of the {len(ids)} API tasks arrived within 60 s")
        return figures


def measure(
    tasks: int, services: int, *, tag: str | None = None, profile: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """Start a daemon with `services` services, measure, stop it; returns the figures (and prints them).

    With `tenant`, the tasks are created by an admin token of that tenant (its runs go to the tenant's store)."""
    folder = Path(tempfile.mkdtemp(prefix="sv-bench-api-", dir="/tmp"))
    arrivals: dict[str, float] = {}
    server = _receiver(arrivals)
    config = _config(folder, services)
    store = ApiStore(folder / "state")
    token, _ = store.create_token("bench", Role.ADMIN, tenant, None)
    store.close()
    env = {**os.environ, **({TAG_VAR: tag} if tag else {})}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervise.supervisor", "start", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    client = Client(f"ipc://{folder}/state/control.sock", timeout_s=5.0)
    try:
        address = http_address(client, daemon)
        receiver = f"http://127.0.0.1:{server.server_address[1]}/hook"
        spy = None
        if profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(daemon.pid), "--rate", "200", "--format", "raw", "-o", profile],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(1)  # py-spy attaches
        figures = asyncio.run(
            _measure(f"http://{address}/api/v1", token, tasks, services, receiver, arrivals, daemon.pid)
        )
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        return figures
    finally:
        client.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def run(plan: Any, tag: str, log: Any) -> list[Row]:
    """The "http api (supervise only)" rows of `python -m bench`: plan.n services, 2000 tasks (500 quick)."""
    tasks = 2000 if plan.runs > 3 else 500
    figures = measure(tasks, plan.n, tag=tag)
    creation = Row(SCENARIO, f"task creation, POST /api/v1/tasks ({IN_FLIGHT} in flight, keep-alive)", "/s")
    creation.samples["supervise"] = [figures["tasks_per_s"]]
    creation.target = (">= 1000/s", lambda v: v >= 1000)
    listing = Row(SCENARIO, f"GET /api/v1/services, {plan.n} services", "ms", stat="p50")
    listing.samples["supervise"] = figures["services_ms"]
    listing.target = ("<= 5 ms", lambda v: v <= 5)
    rows = [creation, listing]
    for stat in ("p50", "p95"):
        late = Row(SCENARIO, f"fire lateness {stat}, {LATENESS_TASKS} API tasks due together", "ms", stat=stat)
        late.samples["supervise"] = figures["lateness_ms"]
        if not figures["lateness_ms"]:
            late.notes["supervise"] = "no call arrived"
        rows.append(late)
    log(f"http api: {figures['tasks_per_s']:.0f} tasks/s, {figures['arrived']}/{LATENESS_TASKS} calls arrived")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2000, help="tasks to create (default 2000)")
    ap.add_argument("--services", type=int, default=200, help="services to list (default 200)")
    ap.add_argument(
        "--profile", metavar="FILE", help="sample the daemon with py-spy while it is measured (collapsed stacks)"
    )
    ap.add_argument("--tenant", help="create the tasks with an admin token of this tenant (default: no tenant)")
    args = ap.parse_args(argv)
    measure(args.tasks, args.services, profile=args.profile, tenant=args.tenant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
