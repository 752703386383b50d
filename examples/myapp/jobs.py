"""Example services for examples/supervise.toml."""

from __future__ import annotations

import hashlib
import random
import time

from supervise.workers import JobContext, Service


def check_messages(ctx: JobContext) -> None:
    """A long-running poller: checks an inbox every two seconds until told to stop."""
    print(f"checker up as {ctx.worker_id}", flush=True)
    while not ctx.wait(2.0):
        ctx.count("checks")
        print("checked messages: 0 new", flush=True)
    print("checker stopping cleanly", flush=True)


def crunch(ctx: JobContext) -> None:
    """CPU-heavy work, isolated in its own process: hashes blocks until cancelled."""
    digest = b"seed"
    while not ctx.cancelled:
        for _ in range(20_000):
            digest = hashlib.sha256(digest).digest()
        ctx.count("blocks")
        ctx.wait(0.01)


class Flaky(Service):
    """A service that crashes now and then; supervise restarts it."""

    def setup(self) -> None:
        self.started = time.monotonic()

    def run(self, ctx: JobContext) -> None:
        lifetime = random.uniform(5, 20)
        print(f"flaky will crash in {lifetime:.1f}s", flush=True)
        while not ctx.wait(0.5):
            if time.monotonic() - self.started > lifetime:
                raise RuntimeError("flaky crashed, as it does now and then")


def check_inbox(ctx: JobContext) -> dict[str, int]:
    """A scheduled run: look at an inbox once; the return value is the run's result."""
    ctx.count("inbox_checks")
    return {"new": 0}


def sync_data(ctx: JobContext, region: str = "eu") -> dict[str, object]:
    """A scheduled run with arguments; a long one would check `ctx.cancelled` (timeouts cancel it)."""
    rows = random.randint(0, 100)
    ctx.wait(0.2)
    return {"region": region, "rows": rows}


def nightly_report(ctx: JobContext) -> str:
    """A cron run; `ctx.nominal_time` is the night it is for, even when it runs late after downtime."""
    return f"report for {getattr(ctx, 'nominal_time', None)}"
