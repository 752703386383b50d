"""The context a Python target runs with: cancellation, pause, heartbeats, metrics.

`ctx.cancelled` becomes true when the supervisor asks the worker to stop (a stop
message or SIGTERM); `ctx.wait(seconds)` sleeps but wakes at once on cancel and
holds while the service is paused. A target that checks either stops gracefully.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping


class _Flag:
    """A `threading.Event` whose lock and condition are made on the first wait.

    A scheduled service has one context per run, and most runs are never waited on
    (an async target, a run that is never cancelled): setting and reading a flag
    then costs no lock, condition or event (two events per run were a tenth of a
    busy worker's time).
    """

    __slots__ = ("_event", "_set")
    _guard = threading.Lock()  # makes the event and moves the flag together

    def __init__(self, value: bool = False) -> None:
        self._set = value
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._guard:
            self._set = True
            if self._event is not None:
                self._event.set()

    def clear(self) -> None:
        with self._guard:
            self._set = False
            if self._event is not None:
                self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True  # what Event.wait returns at once for a set event (`ctx.wait` asks this of pause)
        event = self._event
        if event is None:
            with self._guard:
                if self._event is None:
                    self._event = threading.Event()
                    if self._set:
                        self._event.set()
                event = self._event
        return event.wait(timeout)


class JobContext:
    """Handed to a target as its first argument (if it takes one)."""

    def __init__(self, *, service: str, worker_id: str) -> None:
        self.service = service
        self.worker_id = worker_id
        self._cancelled = _Flag()
        self._running = _Flag(True)  # set while not paused
        self._lock = threading.Lock()
        self._counters: dict[str, float] = {}
        self._gauges: dict[str, float] = {}
        self._metrics_dirty = False
        self._watchdog_pending = False

    # -- cancellation and pause -------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the supervisor has asked this worker to stop."""
        return self._cancelled.is_set()

    @property
    def paused(self) -> bool:
        """True while the supervisor has paused this service."""
        return not self._running.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, returning early on cancel; then hold while paused.

        Returns:
            True if the worker was cancelled (the target should return), else False.
        """
        if self._cancelled.wait(seconds):
            return True
        while not self._running.wait(0.1):
            if self._cancelled.is_set():
                return True
        return self._cancelled.is_set()

    def wait_cancelled(self) -> None:
        """Block until cancelled (the worker of a scheduled service idles here between runs)."""
        self._cancelled.wait()

    def cancel(self) -> None:
        self._cancelled.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # -- the service's own liveness and metrics ----------------------------

    def heartbeat(self) -> None:
        """Tell the supervisor the service's own code is alive (its watchdog)."""
        with self._lock:
            self._watchdog_pending = True

    def take_watchdog(self) -> bool:
        """True once after each `heartbeat()` call (the runtime forwards it to the supervisor)."""
        with self._lock:
            pending, self._watchdog_pending = self._watchdog_pending, False
            return pending

    def count(self, name: str, n: float = 1) -> None:
        """Add `n` to the counter `name` (exported with the service's metrics)."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n
            self._metrics_dirty = True

    def gauge(self, name: str, value: float) -> None:
        """Set the gauge `name` to `value`."""
        with self._lock:
            self._gauges[name] = value
            self._metrics_dirty = True

    def take_metrics(self) -> tuple[Mapping[str, float], Mapping[str, float]] | None:
        """The counters and gauges if they changed since the last call, else None."""
        with self._lock:
            if not self._metrics_dirty:
                return None
            self._metrics_dirty = False
            return dict(self._counters), dict(self._gauges)


class RunContext(JobContext):
    """The context of one scheduled run: its id, nominal time, attempt and progress.

    Cancelling the run (the `cancel` command, a timeout, or the worker stopping)
    sets `ctx.cancelled` for this run only.
    """

    def __init__(
        self,
        *,
        service: str,
        worker_id: str,
        run_id: str,
        nominal_time: str | None,
        attempt: int,
        report: Callable[..., None],
        key: str | None = None,
        not_before: float = 0.0,
        epoch: int | None = None,
    ) -> None:
        super().__init__(service=service, worker_id=worker_id)
        self.run_id = run_id
        self.not_before = not_before  # Unix time the run is due (0: at once); it starts no earlier
        # Cluster mode: the fencing token of this run's lease; a takeover runs it again with a
        # higher one, so a receiver that remembers the highest epoch per key can refuse a stale writer.
        self.epoch = epoch
        # The same for every attempt and re-run of one occurrence: receivers deduplicate on it.
        self.idempotency_key = key or run_id
        self.nominal_time = nominal_time  # ISO-8601 with offset, None for a manual run
        self.attempt = attempt
        self._report = report

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report how far the run is (0..1) and/or what it is doing; shown in `runs`."""
        self._report("run_progress", run_id=self.run_id, progress=fraction, message=message)
