"""What the supervisor aggregates about its services: counters, exits by cause,
duration percentiles, worker-published metrics, process figures and memory limits.

Pure: no I/O, no clock. The shell feeds it events (`observe_event`), worker
`metrics` messages and psutil samples, always with the time or the key passed
in; memory stays flat however long the supervisor runs (a fixed ring per service
for durations, one slot per counter name).
"""

from __future__ import annotations

import math
import signal
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DURATION_WINDOW = 1024
"""How many recent run durations each service keeps for its percentiles."""

QUANTILES = (0.5, 0.95, 0.99)

MEMORY_SAMPLES_OVER = 2
"""Consecutive samples over `max_memory` before the worker is restarted: a spike
shorter than one sampling interval is tolerated, a worker that stays over is not."""

MAX_CUSTOM_METRICS = 256
"""Names a service may publish (counters and gauges each); more are dropped and counted."""


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """Resource figures of a process tree (a worker and its descendants, or the supervisor).

    Attributes:
        cpu_percent: CPU use since the previous sample, 100 = one core.
        cpu_seconds: user + system CPU time of the tree (reaped children included).
        rss_bytes: resident memory, summed over the processes (shared pages count in each).
        threads: threads, summed.
        fds: open file descriptors, summed.
        children: descendants of the main process (0 for a worker that forks nothing).
        processes: processes in the tree, the main one included.
    """

    cpu_percent: float = 0.0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    threads: int = 0
    fds: int = 0
    children: int = 0
    processes: int = 0

    def __add__(self, other: ProcessStats) -> ProcessStats:
        return ProcessStats(
            self.cpu_percent + other.cpu_percent,
            self.cpu_seconds + other.cpu_seconds,
            self.rss_bytes + other.rss_bytes,
            self.threads + other.threads,
            self.fds + other.fds,
            self.children + other.children,
            self.processes + other.processes,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "cpu_percent": round(self.cpu_percent, 1),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "rss_bytes": self.rss_bytes,
            "threads": self.threads,
            "fds": self.fds,
            "children": self.children,
            "processes": self.processes,
        }


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank `q`-quantile (0 < q <= 1) of an ascending list; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(round(len(sorted_values) * q, 9)))  # round: 20 * 0.95 must be 19, not 19.0000001
    return sorted_values[min(len(sorted_values), rank) - 1]


class DurationWindow:
    """The last `size` durations (ms) in a ring, plus a count and sum over all time."""

    __slots__ = ("_next", "_ring", "count", "size", "sum_ms")

    def __init__(self, size: int = DURATION_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._ring: list[float] = []
        self._next = 0
        self.count = 0
        self.sum_ms = 0.0

    def add(self, duration_ms: float) -> None:
        if len(self._ring) < self.size:
            self._ring.append(duration_ms)
        else:
            self._ring[self._next] = duration_ms
        self._next = (self._next + 1) % self.size
        self.count += 1
        self.sum_ms += duration_ms

    def __len__(self) -> int:
        return len(self._ring)

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> dict[float, float | None]:
        ordered = sorted(self._ring)
        return {q: percentile(ordered, q) for q in qs}


class CarryOver:
    """Per-incarnation cumulative values made monotonic across incarnations.

    A worker's counters (and its CPU seconds) restart at zero with each new
    process. The last values seen from a finished incarnation are folded into a
    base, so `totals()` never goes backwards while the service lives.
    """

    __slots__ = ("_base", "_current", "_key", "dropped")

    def __init__(self) -> None:
        self._base: dict[str, float] = {}
        self._key: object = None
        self._current: dict[str, float] = {}
        self.dropped = 0

    def update(self, key: object, values: Mapping[str, float]) -> None:
        """`values` are the cumulative figures of the incarnation `key` (a pid, an incarnation number)."""
        if key != self._key:
            for name, value in self._current.items():
                self._base[name] = self._base.get(name, 0.0) + value
            self._key = key
            self._current = {}
        for name, value in values.items():
            if (
                name not in self._current
                and name not in self._base
                and len(self._base | self._current) >= MAX_CUSTOM_METRICS
            ):
                self.dropped += 1
                continue
            # A decrease within one incarnation (a child that exited) keeps the high-water mark.
            self._current[name] = max(float(value), self._current.get(name, 0.0))

    def totals(self) -> dict[str, float]:
        out = dict(self._base)
        for name, value in self._current.items():
            out[name] = out.get(name, 0.0) + value
        return out


def decide_over_memory(streak: int, rss_bytes: int, limit_bytes: int | None) -> tuple[int, bool]:
    """One sample against `max_memory`: the new streak of samples over, and whether to act now."""
    if limit_bytes is None or rss_bytes <= limit_bytes:
        return 0, False
    streak += 1
    return streak, streak == MEMORY_SAMPLES_OVER


def count_within(history_ms: Iterable[int], now_ms: int, window_ms: int) -> int:
    """How many timestamps of `history_ms` lie within the last `window_ms` before `now_ms`."""
    return sum(1 for t in history_ms if now_ms - t < window_ms)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


@dataclass
class ServiceMetrics:
    """Everything aggregated about one service since the supervisor started."""

    spawns: int = 0
    restarts: int = 0
    exits: Counter[str] = field(default_factory=Counter)  # by cause: exit, signal, hung, memory, ...
    exit_codes: Counter[str] = field(default_factory=Counter)  # "1": 3
    exit_signals: Counter[str] = field(default_factory=Counter)  # "SIGKILL": 1
    runs: Counter[str] = field(default_factory=Counter)  # by outcome: succeeded, failed, ...
    durations: DurationWindow = field(default_factory=DurationWindow)
    counters: CarryOver = field(default_factory=CarryOver)
    gauges: dict[str, float] = field(default_factory=dict)
    cpu: CarryOver = field(default_factory=CarryOver)
    process: ProcessStats | None = None  # the last sample; None while no worker runs
    memory_streak: int = 0

    def snapshot(self) -> dict[str, Any]:
        quantiles = self.durations.quantiles()
        return {
            "spawns": self.spawns,
            "restarts_total": self.restarts,
            "exits": dict(self.exits),
            "exit_codes": dict(self.exit_codes),
            "exit_signals": dict(self.exit_signals),
            "runs": dict(self.runs),
            "run_duration": {
                "count": self.durations.count,
                "sum_s": self.durations.sum_ms / 1000,
                "window": len(self.durations),
                **{f"p{round(q * 100)}_s": (v / 1000 if v is not None else None) for q, v in quantiles.items()},
            },
            "counters": self.counters.totals(),
            "gauges": dict(self.gauges),
            "process": self.process.as_dict() if self.process is not None else None,
            "cpu_seconds_total": round(self.cpu.totals().get("cpu", 0.0), 3),
        }


RUN_FINISHED_KINDS = frozenset({"run_finished"})


class MetricsBook:
    """The aggregate of every service, fed by events, worker messages and samples."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceMetrics] = {}
        self.supervisor: ProcessStats | None = None
        self.events = 0
        self.events_by_kind: Counter[str] = Counter()

    def service(self, name: str) -> ServiceMetrics:
        found = self.services.get(name)
        if found is None:
            found = self.services[name] = ServiceMetrics()
        return found

    def forget(self, name: str) -> None:
        """A service removed at runtime: its figures go with it."""
        self.services.pop(name, None)

    def observe_event(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        """Count what an event says: spawns, restarts, exits by cause, runs by outcome."""
        self.events += 1
        self.events_by_kind[kind] += 1
        m = self.service(service)
        if kind == "spawned":
            m.spawns += 1
        elif kind == "restarting":
            m.restarts += 1
        elif kind == "exited":
            m.exits[str(detail.get("cause", "exit"))] += 1
            code, sig = detail.get("code"), detail.get("signal")
            if isinstance(sig, int):
                m.exit_signals[signal_name(sig)] += 1
            elif isinstance(code, int):
                m.exit_codes[str(code)] += 1
            m.process = None
            m.memory_streak = 0
        elif kind == "spawn_failed":
            m.exits["spawn_failed"] += 1
        elif kind == "run_skipped":
            m.runs["skipped"] += 1
        elif kind in RUN_FINISHED_KINDS:
            m.runs[str(detail.get("outcome") or detail.get("state") or "finished")] += 1
            duration = detail.get("duration_ms")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0:
                m.durations.add(float(duration))

    def observe_worker_metrics(
        self, service: str, incarnation: int, counters: Mapping[str, object], gauges: Mapping[str, object]
    ) -> None:
        """A worker's own counters (cumulative per incarnation) and gauges (last value wins)."""
        m = self.service(service)
        m.counters.update(incarnation, _numbers(counters))
        m.gauges = dict(list(_numbers(gauges).items())[:MAX_CUSTOM_METRICS])

    def observe_sample(self, service: str, key: object, stats: ProcessStats, limit_bytes: int | None) -> bool:
        """Record a sample of the worker `key` (its pid); True when it is now over `max_memory`."""
        m = self.service(service)
        m.process = stats
        m.cpu.update(key, {"cpu": stats.cpu_seconds})
        m.memory_streak, over = decide_over_memory(m.memory_streak, stats.rss_bytes, limit_bytes)
        return over

    def clear_sample(self, service: str) -> None:
        """No worker runs: its last figures no longer describe anything."""
        m = self.service(service)
        m.process = None
        m.memory_streak = 0


def _numbers(values: Mapping[str, object]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
