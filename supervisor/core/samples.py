"""The last minutes of every service's CPU and memory samples, for charts: pure, no I/O, no clock.

The sampler reads every worker once per `sample_interval`; `MetricsBook` keeps only
the newest figures. `SampleHistory` keeps a bounded ring per service so a
dashboard can draw a sparkline without a time-series database: a few hundred
tuples per service, and nothing at all for services that never ran.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

HISTORY_SPAN_MS = 10 * 60 * 1000
"""How far back the rings reach (their length is this over the sample interval)."""
MAX_POINTS = 600


@dataclass(frozen=True, slots=True)
class Point:
    """One sample of one service's worker tree."""

    wall_s: float  # seconds since the epoch, when the sample was applied
    cpu_percent: float
    rss_bytes: int


def capacity_for(sample_interval_ms: int, span_ms: int = HISTORY_SPAN_MS) -> int:
    """How many points cover `span_ms` at one point per `sample_interval_ms` (2 to `MAX_POINTS`)."""
    return max(2, min(MAX_POINTS, math.ceil(span_ms / max(1, sample_interval_ms))))


SampleListener = Callable[[float, Mapping[str, Point]], None]


class SampleHistory:
    """A ring of `Point`s per service; `listeners` hear each round of samples as it is recorded."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._rings: dict[str, collections.deque[Point]] = {}
        self.rounds = 0
        self.listeners: list[SampleListener] = []

    def record(self, wall_s: float, samples: Mapping[str, tuple[float, int]]) -> None:
        """One round of samples: service name -> (CPU percent, RSS bytes) of those with a worker."""
        points = {name: Point(wall_s, round(cpu, 1), rss) for name, (cpu, rss) in samples.items()}
        for name, point in points.items():
            ring = self._rings.get(name)
            if ring is None:
                ring = self._rings[name] = collections.deque(maxlen=self.capacity)
            ring.append(point)
        self.rounds += 1
        for listener in list(self.listeners):
            listener(wall_s, points)

    def retain(self, names: Iterable[str]) -> None:
        """Forget the services not in `names` (removed at runtime): their history goes with them."""
        keep = set(names)
        for name in [n for n in self._rings if n not in keep]:
            del self._rings[name]

    def points(self, name: str, last: int | None = None) -> list[Point]:
        """The newest `last` points of a service (all kept when None), oldest first."""
        ring = self._rings.get(name)
        if ring is None:
            return []
        items = list(ring)
        return items if last is None or last >= len(items) else items[len(items) - last :]

    def series(self, names: Iterable[str], last: int | None = None) -> dict[str, dict[str, list[float] | list[int]]]:
        """Columns per service, the shape a chart wants: {"t": [...], "cpu": [...], "rss": [...]}."""
        out: dict[str, dict[str, list[float] | list[int]]] = {}
        for name in names:
            points = self.points(name, last)
            if points:
                out[name] = {
                    "t": [round(p.wall_s, 1) for p in points],
                    "cpu": [p.cpu_percent for p in points],
                    "rss": [p.rss_bytes for p in points],
                }
        return out
