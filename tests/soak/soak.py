"""Soak: many services, a crash storm, hostile control frames and scheduled runs, for a while.

    python tests/soak/soak.py --duration 1800          # the figures in docs/reliability.md
    python tests/soak/soak.py --duration 60 --services 50

Not part of the default test run. It starts a real daemon in a temporary state
directory, measures the supervisor's RSS, open fds and CPU after a warm-up and at
the end, counts restarts and scheduled runs, and exits 1 if memory or fds grew
without bound, a scheduled run was lost, or far fewer runs were recorded than the
schedule asked for. It cleans up every process it started.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import zmq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from supervise.protocol import Client  # noqa: E402

SCHEDULED = 10  # Python services running a job every second
CRASHERS_SHARE = 0.2  # of the services, these exit every 0.5 s and are restarted at once
HOSTILE_FRAMES = 100_000


def write_config(folder: Path, services: int) -> Path:
    crashers = int(services * CRASHERS_SHARE)
    sleepers = services - crashers - SCHEDULED
    lines = ["[supervisor]", 'state_dir = "state"', "history_keep = 200", ""]
    for i in range(sleepers):
        lines += [f"[services.sleep{i}]", 'command = ["sleep", "100000"]', 'start_timeout = "0s"', ""]
    for i in range(crashers):
        lines += [
            f"[services.crash{i}]",
            'command = ["sh", "-c", "sleep 0.5; exit 1"]',
            'restart = "always"',
            'start_timeout = "0s"',
            'backoff = "0s"',
            "max_restarts = 100000000",
            'restart_window = "1s"',
            "",
        ]
    for i in range(SCHEDULED):
        lines += [
            f"[services.job{i}]",
            'target = "tests.children.jobs:noop"',
            f'cwd = "{REPO}"',
            'every = "1s"',
            "",
        ]
    path = folder / "supervise.toml"
    path.write_text("\n".join(lines))
    return path


def hostile_sender(endpoint: str, frames: int, stop: threading.Event, sent: list[int]) -> None:
    """Garbage at the control socket, paced over the run; replies are read and dropped."""
    rng = random.Random(7)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.connect(endpoint)
    try:
        while sent[0] < frames and not stop.is_set():
            for _ in range(100):
                sock.send(rng.randbytes(rng.randint(1, 300)), zmq.NOBLOCK)
                sent[0] += 1
            while sock.poll(0):
                sock.recv()
            stop.wait(0.05)
    except zmq.Again:
        pass
    finally:
        sock.close()


def sample(proc: psutil.Process) -> dict[str, float]:
    with proc.oneshot():
        cpu = proc.cpu_times()
        return {"rss_mb": proc.memory_info().rss / 1e6, "fds": proc.num_fds(), "cpu_s": cpu.user + cpu.system}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of steady load (default 120)")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=20.0)
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # run the cleanup in `finally`
    folder = Path(tempfile.mkdtemp(prefix="sv-soak-", dir="/tmp"))
    config = write_config(folder, args.services)
    log = open(folder / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervise.supervisor", "start", str(config), "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    endpoint = f"ipc://{folder}/state/control.sock"
    client = Client(endpoint, timeout_s=10)
    stop = threading.Event()
    sent = [0]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.call("ping")
                break
            except Exception:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not come up; see " + str(folder / "daemon.log")) from None
                time.sleep(0.2)
        proc = psutil.Process(daemon.pid)
        time.sleep(args.warmup)  # let every service start and the allocator settle
        start = sample(proc)
        start_restarts = sum(s["restarts"] for s in client.call("status")["services"])
        started_at = time.monotonic()
        sender = threading.Thread(target=hostile_sender, args=(endpoint, HOSTILE_FRAMES, stop, sent), daemon=True)
        sender.start()
        worst_status_ms = 0.0
        while time.monotonic() - started_at < args.duration:
            t0 = time.monotonic()
            client.call("status")
            worst_status_ms = max(worst_status_ms, (time.monotonic() - t0) * 1000)
            time.sleep(1.0)
        elapsed = time.monotonic() - started_at
        end = sample(proc)
        stop.set()
        sender.join()
        status = client.call("status")["services"]
        restarts = sum(s["restarts"] for s in status) - start_restarts
        # One query per service: a single `runs` reply is capped at 10 000 rows.
        runs = [r for i in range(SCHEDULED) for r in client.call("runs", name=f"job{i}", limit=10_000)["runs"]]
        window_start = time.time() - elapsed
        recent = [r for r in runs if r["created_at"] and _ts(r["created_at"]) >= window_start]
        succeeded = sum(1 for r in recent if r["state"] == "succeeded")
        lost = sum(1 for r in runs if r["state"] == "lost")
        expected = int(elapsed) * SCHEDULED
    finally:
        stop.set()
        client.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        log.close()
    result = {
        "duration_s": round(elapsed),
        "services": args.services,
        "rss_mb": [round(start["rss_mb"], 1), round(end["rss_mb"], 1)],
        "fds": [start["fds"], end["fds"]],
        "cpu_percent_of_one_core": round(100 * (end["cpu_s"] - start["cpu_s"]) / elapsed, 1),
        "restarts": restarts,
        "restarts_per_s": round(restarts / elapsed, 1),
        "hostile_frames": sent[0],
        "worst_status_ms": round(worst_status_ms, 1),
        "scheduled_runs_succeeded": succeeded,
        "scheduled_runs_expected": expected,
        "lost_runs": lost,
    }
    print(json.dumps(result, indent=2))
    problems = []
    if end["rss_mb"] > start["rss_mb"] * 1.5 + 10:
        problems.append(f"RSS grew from {start['rss_mb']:.1f} to {end['rss_mb']:.1f} MB")
    if end["fds"] > start["fds"] + 20:
        problems.append(f"open fds grew from {start['fds']} to {end['fds']}")
    if lost:
        problems.append(f"{lost} runs were lost")
    if succeeded < expected * 0.9:
        problems.append(f"only {succeeded} of about {expected} scheduled runs succeeded")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if problems else 0


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


if __name__ == "__main__":
    sys.exit(main())
