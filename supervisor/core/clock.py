"""Time as an argument: the `Clock` the shell reads and the `FakeClock` tests drive.

The core never reads a clock itself; the shell passes `now_ms` (monotonic
milliseconds) into it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, final


class Clock(Protocol):
    def monotonic_ms(self) -> int:
        """Milliseconds on a clock that never goes backwards."""
        ...

    def wall(self) -> datetime:
        """The current time of day, timezone-aware (UTC)."""
        ...


@final
class SystemClock:
    """The real clocks: `time.monotonic` and `time.time`."""

    def monotonic_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def wall(self) -> datetime:
        return datetime.now(UTC)


@final
class FakeClock:
    """A clock that moves only when told to; for tests of anything that takes `now`."""

    def __init__(self, start_ms: int = 1_000_000, wall: datetime | None = None) -> None:
        self._now_ms = start_ms
        self._start_ms = start_ms
        self._wall0 = wall or datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic_ms(self) -> int:
        return self._now_ms

    def wall(self) -> datetime:
        return self._wall0 + timedelta(milliseconds=self._now_ms - self._start_ms)

    def advance(self, ms: int) -> int:
        """Move forward by `ms` and return the new time; moving backwards is refused."""
        if ms < 0:
            raise ValueError(f"a monotonic clock cannot go backwards (advance({ms}))")
        self._now_ms += ms
        return self._now_ms
