"""The window of pending runs: the soonest one-shots in memory, the rest in the store.

Pure: no clock, no store. A million one-shots added for the coming day cost
store rows, not memory: the scheduler keeps the `limit` soonest here and reads
the next ones from the store (`Store.pending_runs`, after `horizon`) as these
fire. Everything pending with a (time, run id) at or before `horizon` is in
memory; when `complete`, every pending run is.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from datetime import datetime

from supervise.supervisor.core.runs import Run

DEFAULT_LIMIT = 2000

Key = tuple[datetime, str]


def pending_key(run: Run) -> Key:
    """A pending run's place: its time, then its id (the store's order)."""
    assert run.nominal_time is not None, "a pending run has a nominal time"
    return (run.nominal_time, run.run_id)


class PendingWindow:
    """The soonest pending runs, in (time, run id) order, at most `limit` of them."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._keys: list[Key] = []
        self._runs: dict[str, Run] = {}
        self.complete = True  # nothing pending beyond what is here (until a load says otherwise)
        self.horizon: Key | None = None  # when not complete: the last key known to be here

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def next_at(self) -> datetime | None:
        """When the soonest pending run is due, or None."""
        return self._keys[0][0] if self._keys else None

    def load(self, runs: list[Run], asked: int) -> None:
        """Take the next runs read from the store after `horizon` (`asked` were asked for)."""
        for run in runs:
            self._insert(run)
        if len(runs) < asked:
            self.complete, self.horizon = True, None
        elif runs:
            self.complete, self.horizon = False, pending_key(runs[-1])
        self._shrink()

    def add(self, run: Run) -> bool:
        """A new pending run; True when it is kept in memory, False when only the store has it."""
        key = pending_key(run)
        if not self.complete and self.horizon is not None and key > self.horizon:
            return False
        self._insert(run)
        self._shrink()
        return run.run_id in self._runs

    def due(self, now: datetime) -> list[Run]:
        """Take every run whose time is at or before `now`, soonest first."""
        return self.take(now, now, lambda _run: False)

    def take(self, now: datetime, ahead_until: datetime, early_ok: Callable[[Run], bool]) -> list[Run]:
        """Take every run due at or before `now`, and those due by `ahead_until` for which
        `early_ok(run)` (a warm worker can hold them and start them on time), soonest first."""
        if not self._keys or self._keys[0][0] > ahead_until:
            return []
        end = bisect.bisect_right(self._keys, (ahead_until, "\U0010ffff"))
        taken: list[Run] = []
        kept: list[Key] = []
        for key in self._keys[:end]:
            run = self._runs[key[1]]
            if key[0] <= now or early_ok(run):
                taken.append(run)
                del self._runs[key[1]]
            else:
                kept.append(key)
        self._keys[:end] = kept
        return taken

    @property
    def soonest(self) -> Run | None:
        """The soonest pending run here, or None."""
        return self._runs[self._keys[0][1]] if self._keys else None

    def get(self, run_id: str) -> Run | None:
        """The pending run with this id if it is here, else None."""
        return self._runs.get(run_id)

    def remove(self, run_id: str) -> Run | None:
        """Take one run out (it was cancelled); None when it is not here."""
        run = self._runs.pop(run_id, None)
        if run is not None:
            self._keys.remove(pending_key(run))
        return run

    def runs(self) -> list[Run]:
        """The runs here, soonest first."""
        return [self._runs[run_id] for _, run_id in self._keys]

    @property
    def wants_more(self) -> bool:
        """The store holds more and the window is at most half full."""
        return not self.complete and len(self._keys) <= self.limit // 2

    @property
    def room(self) -> int:
        return max(0, self.limit - len(self._keys))

    def _insert(self, run: Run) -> None:
        if run.run_id in self._runs:
            return
        bisect.insort(self._keys, pending_key(run))
        self._runs[run.run_id] = run

    def _shrink(self) -> None:
        """Beyond `limit`, the latest runs leave memory; the horizon moves back before them."""
        if len(self._keys) <= self.limit:
            return
        dropped, self._keys = self._keys[self.limit :], self._keys[: self.limit]
        for _, run_id in dropped:
            del self._runs[run_id]
        self.complete, self.horizon = False, self._keys[-1]
