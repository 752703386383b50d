"""Fire lateness: how long after its time a run started, as a Prometheus-style histogram.

Pure and fixed-size: one count per bucket, a total count and a sum, however many
runs. A run's time is its nominal time plus jitter (scheduled occurrences) or its
datetime (one-shots); its start is time-stamped by the worker that starts it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds, in seconds; a last bucket (+Inf) holds the rest."""


@dataclass
class LatenessHistogram:
    """Counts of runs by how late they started."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    count: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one start `seconds` after its time (negative values count as 0)."""
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, runs at or under it) pairs, ending with ("+Inf", count): Prometheus's buckets."""
        total, out = 0, []
        for bound, n in zip((*map(str, BUCKETS_S), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def as_dict(self) -> dict[str, object]:
        return {"buckets": self.cumulative(), "count": self.count, "sum_s": self.sum_s}
