"""Cluster mode: the worker enforces its runs' lease deadlines on its own (docs/cluster.md).

A run a cluster node holds under a lease arrives with `lease_until`, a time on
CLOCK_MONOTONIC (the same clock for every process of the host, so the deadline
the supervisor computed means the same instant here, whatever the wall clock
does and however long the message took), and `lease_grace_ms`. The supervisor
moves `lease_until` forward with a `lease` message after each renewal that got
through. When a run's `lease_until` passes without one (the supervisor is
frozen, stuck, or cut off from the database), this worker cancels the run (and
reports its end as `run_lease_expired`, not as an outcome); if
the run is still there `lease_grace_ms` later (a target that ignores its
cancellation), the worker process exits at once, so no code of that run acts
after its lease could have been taken over by another node.

The supervisor picks `lease_until` = its own fencing deadline (lease_ttl minus
the safety margin after the renewal was sent) and a grace of half that margin:
the run is gone before the lease can expire on the database clock.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

EXIT_LEASE_EXPIRED = 4  # a leased run outlived its lease and ignored its cancellation


@dataclass
class _Lease:
    until: float  # CLOCK_MONOTONIC: cancel the run then
    grace_s: float  # then, this long for the cancellation to take
    cancelled: bool = False


class RunLeases:
    """The lease deadlines of the runs in this worker, enforced by a thread of their own.

    Args:
        cancel: cancel one run because its lease ran out (the executor's `expire`).
        running: whether a run is still in this worker (received and not finished).
        exit: ends the process (os._exit; a test may pass something else).
        clock: CLOCK_MONOTONIC in seconds.
    """

    def __init__(
        self,
        *,
        cancel: Callable[[str], None],
        running: Callable[[str], bool],
        exit: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cancel = cancel
        self._running = running
        self._exit = exit
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.expired: list[str] = []  # runs cancelled because their lease ran out, oldest first

    def grant(self, run_id: str, until: float, grace_ms: float) -> None:
        """A leased run arrived: cancel it at `until` unless a renewal moves that."""
        with self._changed:
            self._leases[run_id] = _Lease(until, max(0.0, grace_ms / 1000))
            self._changed.notify()
        self._start()

    def renew(self, runs: dict[str, float]) -> None:
        """A renewal got through: these runs' leases hold until the new times (never moved back)."""
        with self._changed:
            for run_id, until in runs.items():
                lease = self._leases.get(run_id)
                if lease is not None and not lease.cancelled and until > lease.until:
                    lease.until = until
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="supervise-leases", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                now = self._clock()
                for run_id, lease in list(self._leases.items()):
                    if not self._running(run_id):
                        del self._leases[run_id]  # finished: nothing to enforce
                    elif not lease.cancelled and now >= lease.until:
                        self._expire(run_id, lease)
                    elif lease.cancelled and now >= lease.until + lease.grace_s:
                        self._give_up(run_id)
                        return
                soonest = min(
                    (lease.until + (lease.grace_s if lease.cancelled else 0.0) for lease in self._leases.values()),
                    default=None,
                )
                self._changed.wait(None if soonest is None else max(0.0, soonest - self._clock()) + 0.001)

    def _expire(self, run_id: str, lease: _Lease) -> None:
        lease.cancelled = True
        self.expired.append(run_id)
        print(
            f"supervise worker: run {run_id}: its lease was not renewed by its deadline "
            f"(the supervisor is frozen or cut off from the cluster store); cancelling it",
            file=sys.stderr,
            flush=True,
        )
        self._cancel(run_id)

    def _give_up(self, run_id: str) -> None:
        print(
            f"supervise worker: run {run_id} did not stop within {self._leases[run_id].grace_s * 1000:.0f} ms "
            "of its cancellation after its lease ran out; exiting so that it cannot act any more",
            file=sys.stderr,
            flush=True,
        )
        self._exit(EXIT_LEASE_EXPIRED)
