"""Runs per minute per tenant: a sliding window of the last minute's starts.

Pure: time is an argument (`now_s`, monotonic seconds). A tenant may start at
most `limit` runs in any 60 seconds; the one over is refused with the seconds
until the oldest start leaves the window (the `Retry-After` of the 429).
"""

from __future__ import annotations

import collections
import math

WINDOW_S = 60.0
_TRACKED_TENANTS = 10_000


class RunQuota:
    """The runs each tenant started in the last `window_s` seconds, at most `limit` of them."""

    def __init__(self, limit: int, window_s: float = WINDOW_S) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.window_s = window_s
        self._starts: dict[str, collections.deque[float]] = {}

    def take(self, tenant: str, now_s: float, limit: int | None = None) -> int | None:
        """Count one run of `tenant` now and return None; or, over quota, count nothing and return
        the whole seconds (at least 1) until one more is allowed. `limit`: the tenant's own, if it
        has one (else the default)."""
        limit = self.limit if limit is None else limit
        starts = self._starts.get(tenant)
        if starts is None:
            if len(self._starts) >= _TRACKED_TENANTS:
                self._forget_idle(now_s)
            starts = self._starts[tenant] = collections.deque()
        while starts and now_s - starts[0] >= self.window_s:
            starts.popleft()
        if len(starts) >= limit:  # never more than the largest limit it had are kept
            leaving = starts[len(starts) - limit]  # once it is out of the window, one more fits
            return max(1, math.ceil(self.window_s - (now_s - leaving)))
        starts.append(now_s)
        return None

    def give_back(self, tenant: str) -> None:
        """Uncount the newest run of `tenant`: the request that took it did not start one."""
        starts = self._starts.get(tenant)
        if starts:
            starts.pop()

    def used(self, tenant: str, now_s: float) -> int:
        """Runs of `tenant` in the window that ends at `now_s`."""
        return sum(1 for t in self._starts.get(tenant, ()) if now_s - t < self.window_s)

    def _forget_idle(self, now_s: float) -> None:
        for tenant in [k for k, v in self._starts.items() if not v or now_s - v[-1] >= self.window_s]:
            del self._starts[tenant]
