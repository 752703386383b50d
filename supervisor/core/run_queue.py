"""A scheduled service's queue: admitted runs waiting for a free slot, soonest first.

Pure: no clock, no store. The queue holds at most `window` runs in memory; the
others are only rows in the store (state `queued`), counted in `spilled`, and
come back through `refill` as the window drains. Order is the run's time
(nominal, else jittered, else creation), then arrival.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime

from supervise.supervisor.core.runs import Run

DEFAULT_WINDOW = 5000


def queue_time(run: Run) -> datetime:
    """Where a run stands in its queue: its nominal time, else when it became due, else its creation."""
    return run.nominal_time or run.jittered_time or run.created_at


class RunQueue:
    """Queued runs of one service, `window` of them in memory at most."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self._heap: list[tuple[datetime, int, Run]] = []
        self._ids: set[str] = set()
        self._arrivals = itertools.count()
        self.spilled = 0  # queued rows in the store that are not in memory

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def depth(self) -> int:
        """Every queued run: in memory and only in the store."""
        return len(self._heap) + self.spilled

    def push(self, run: Run) -> bool:
        """Queue `run`; False when the window is full (the caller's store row holds it)."""
        if run.run_id in self._ids:
            return True
        if len(self._heap) >= self.window:
            self.spilled += 1
            return False
        heapq.heappush(self._heap, (queue_time(run), next(self._arrivals), run))
        self._ids.add(run.run_id)
        return True

    def pop(self) -> Run | None:
        """The soonest run, or None."""
        if not self._heap:
            return None
        run = heapq.heappop(self._heap)[2]
        self._ids.discard(run.run_id)
        return run

    def peek(self, count: int) -> list[Run]:
        """The `count` soonest runs, left in the queue."""
        return [entry[2] for entry in heapq.nsmallest(count, self._heap)]

    def get(self, run_id: str) -> Run | None:
        """The queued run with this id if it is in memory, else None."""
        if run_id not in self._ids:
            return None
        return next(run for _, _, run in self._heap if run.run_id == run_id)

    def remove(self, run_id: str) -> Run | None:
        """Take one run out (it was cancelled); None when it is not in memory."""
        if run_id not in self._ids:
            return None
        for i, (_, _, run) in enumerate(self._heap):
            if run.run_id == run_id:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                self._ids.discard(run_id)
                return run
        return None

    def runs(self) -> list[Run]:
        """The runs in memory, soonest first."""
        return [entry[2] for entry in sorted(self._heap)]

    @property
    def wants_refill(self) -> bool:
        """Runs wait in the store and the window has room for a good batch of them."""
        return self.spilled > 0 and len(self._heap) <= self.window // 2

    def refill(self, stored: list[Run], total_in_store: int) -> int:
        """Take runs read from the store (the soonest `queued` rows); returns how many were new.

        Args:
            stored: rows in state `queued`, soonest first; those already here are skipped.
            total_in_store: how many `queued` rows the store holds for this service.
        """
        added = 0
        for run in stored:
            if len(self._heap) >= self.window:
                break
            if run.run_id not in self._ids:
                heapq.heappush(self._heap, (queue_time(run), next(self._arrivals), run))
                self._ids.add(run.run_id)
                added += 1
        self.spilled = max(0, total_in_store - len(self._heap))
        return added
