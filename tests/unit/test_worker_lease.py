"""A warm worker enforces its leased runs' deadlines on its own (workers/lease.py).

Real executors and real targets on threads; only the process exit is handed in,
so that a test can see it instead of ending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from supervise.workers import RunContext
from supervise.workers.executor import RunExecutor
from supervise.workers.lease import EXIT_LEASE_EXPIRED, RunLeases
from tests.conftest import wait_for


class Outbox:
    """Where an executor's messages go: kept, to read back."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.lock = threading.Lock()

    def send(self, kind: str, **fields: object) -> None:
        with self.lock:
            self.sent.append((kind, fields))

    def finished(self, run_id: str, kind: str = "run_finished") -> dict[str, object] | None:
        with self.lock:
            return next((f for k, f in self.sent if k == kind and f["run_id"] == run_id), None)


class Exits:
    """Stands for os._exit: records the code."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)


def patient(ctx: RunContext, seconds: float = 10.0) -> str:
    ctx.wait(seconds)
    return "cancelled" if ctx.cancelled else "done"


def stubborn(ctx: RunContext, seconds: float = 3.0) -> None:
    time.sleep(seconds)  # never looks at its cancellation


Worker = tuple[RunExecutor, RunLeases, Outbox, Exits]
MakeWorker = Callable[[Callable[..., object]], Worker]


@pytest.fixture
def worker() -> Iterator[MakeWorker]:
    made: list[tuple[RunExecutor, RunLeases]] = []

    def make(target: Callable[..., object]) -> Worker:
        outbox, exits = Outbox(), Exits()
        runs = RunExecutor(service="job", worker_id="job/1", channel=outbox, target=target, concurrency=4)
        leases = RunLeases(cancel=runs.expire, running=runs.has, exit=exits)
        made.append((runs, leases))
        return runs, leases, outbox, exits

    yield make
    for runs, leases in made:
        leases.close()
        runs.close(timeout_s=5)


def start(
    runs: RunExecutor, leases: RunLeases, run_id: str, lease_s: float, grace_ms: float = 200, **args: object
) -> None:
    runs.start({"run_id": run_id, "args": args, "attempt": 1})
    leases.grant(run_id, time.monotonic() + lease_s, grace_ms)


def test_a_run_whose_lease_is_not_renewed_is_cancelled_at_its_deadline(worker: MakeWorker) -> None:
    runs, leases, outbox, exits = worker(patient)
    began = time.monotonic()
    start(runs, leases, "r1", lease_s=0.3)
    wait_for(lambda: outbox.finished("r1", "run_lease_expired"), timeout_s=5, what="the run to end")
    assert time.monotonic() - began >= 0.3, "not before its deadline"
    assert outbox.finished("r1") is None, "its end is no outcome: the supervisor treats it as lost"
    assert leases.expired == ["r1"] and exits.codes == [] and not runs.has("r1")


def test_renewals_keep_a_run_going_past_its_first_deadline(worker: MakeWorker) -> None:
    runs, leases, outbox, exits = worker(patient)
    start(runs, leases, "r1", lease_s=0.3, seconds=1.2)
    until = time.monotonic() + 1.5
    while outbox.finished("r1") is None and time.monotonic() < until:
        leases.renew({"r1": time.monotonic() + 0.3, "not-here": time.monotonic() + 5})
        time.sleep(0.05)
    finished = wait_for(lambda: outbox.finished("r1"), timeout_s=5, what="the run to end")
    assert finished["result"] == "done", "renewed every 50 ms, it ran its 1.2 s"
    assert leases.expired == [] and exits.codes == []


def test_a_run_that_ignores_its_cancellation_ends_the_worker_after_the_grace(worker: MakeWorker) -> None:
    runs, leases, outbox, exits = worker(stubborn)
    began = time.monotonic()
    start(runs, leases, "r1", lease_s=0.2, grace_ms=300)
    wait_for(lambda: exits.codes, timeout_s=5, what="the worker to exit")
    took = time.monotonic() - began
    assert exits.codes == [EXIT_LEASE_EXPIRED]
    assert took >= 0.5, f"cancelled at 0.2 s, then 300 ms of grace; it exited after {took:.2f} s"
    assert outbox.finished("r1") is None and outbox.finished("r1", "run_lease_expired") is None, "still going"


def test_a_run_that_ended_in_time_leaves_nothing_to_enforce(worker: MakeWorker) -> None:
    runs, leases, outbox, exits = worker(patient)
    start(runs, leases, "r1", lease_s=0.3, seconds=0.0)
    wait_for(lambda: outbox.finished("r1"), timeout_s=5, what="the run to end")
    time.sleep(0.5)  # past its deadline and grace
    assert leases.expired == [] and exits.codes == []
