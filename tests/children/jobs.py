"""Python targets for scheduled-run tests: each call is one run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from supervise.workers import RunContext


def record(ctx: RunContext, region: str = "none", sleep_s: float = 0.0) -> dict[str, object]:
    """Appends one line per run to $RUNS_FILE, then optionally sleeps (cancellable)."""
    with open(os.environ["RUNS_FILE"], "a") as out:
        out.write(f"{ctx.run_id} {region} {ctx.attempt} {time.time():.3f} {ctx.nominal_time}\n")
    if sleep_s:
        ctx.wait(sleep_s)
    return {"region": region, "pid": os.getpid()}


def slow(ctx: RunContext, seconds: float = 60.0) -> None:
    """Runs until cancelled or `seconds` pass; marks the file while it runs."""
    marker = Path(os.environ["RUNS_FILE"])
    with open(marker, "a") as out:
        out.write(f"start {ctx.run_id}\n")
    ctx.wait(seconds)
    with open(marker, "a") as out:
        out.write(f"end {ctx.run_id} cancelled={ctx.cancelled}\n")


def fail(ctx: RunContext) -> None:
    raise RuntimeError(f"attempt {ctx.attempt} failed")


from supervise.workers import Service, registry  # noqa: E402


@registry.job("settle-merchants")
def settle(ctx: RunContext, merchant: str) -> str:
    with open(os.environ["RUNS_FILE"], "a") as out:
        out.write(f"settled {merchant}\n")
    return f"settled {merchant}"


class Counter(Service):
    """A stateful scheduled service: one instance across runs."""

    def setup(self) -> None:
        self.count = 0

    def run_once(self, ctx: RunContext, **args: object) -> int:
        self.count += 1
        return self.count


def noop(ctx: RunContext) -> None:
    """A scheduled run that does nothing (the soak counts them)."""


def deaf(ctx: RunContext, seconds: float = 60.0) -> None:
    """Ignores its cancellation: sleeps on regardless (only killing its worker ends it)."""
    with open(os.environ["RUNS_FILE"], "a") as out:
        out.write(f"start {ctx.run_id} pid={os.getpid()}\n")
    time.sleep(seconds)


def ticker(ctx: RunContext, seconds: float = 60.0, every_s: float = 0.05) -> None:
    """Appends "<run_id> <attempt> <pid> <time>" to $RUNS_FILE every `every_s` for `seconds`,
    ignoring its cancellation (only its worker's exit ends it early)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with open(os.environ["RUNS_FILE"], "a") as out:
            out.write(f"{ctx.run_id} {ctx.attempt} {os.getpid()} {time.time():.3f}\n")
        time.sleep(every_s)
