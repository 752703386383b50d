"""Triggers: the instants at which a scheduled service fires.

The `Trigger` protocol, the `start`/`end`/`max_runs` bounds every kind shares, and the
simple kinds: interval, after-finish, one-shot datetimes, on-start and manual
(scheduling.md §5.2). Cron is in `cron`; building a trigger from config is in `trigger_spec`.
Pure: no I/O, no clock; `after` is always passed in. Every datetime returned is aware and in UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Final, Protocol

from supervise.supervisor.core.units import format_duration_ms

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


class TriggerKind(StrEnum):
    """Which kind of trigger a service has (one config key each)."""

    INTERVAL = "interval"  # `every`: fixed elapsed time, epoch- or anchor-aligned
    AFTER_FINISH = "after_finish"  # `every` + `after_finish`: a delay after the last run ended
    CRON = "cron"  # a cron expression in a time zone
    AT = "at"  # one or more absolute datetimes
    ON_START = "on_start"  # once, when the schedule starts (supervisor or service start)
    MANUAL = "manual"  # never by itself: run-now and backfill only


class Trigger(Protocol):
    """What the scheduler asks of every trigger."""

    @property
    def kind(self) -> TriggerKind: ...

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        """The first fire time strictly after `after`, or None when the trigger is exhausted."""
        ...

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Fire times in (start, end], oldest first, at most `limit` of them."""
        ...

    def describe(self) -> str:
        """One line for humans: `status`, logs, docs."""
        ...


# -- bounds shared by every trigger ---------------------------------------------------------------


def _utc(value: datetime, what: str = "datetime") -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} has no UTC offset; pass an aware datetime")
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else _utc(value, what)


def _normalize_bounds(trigger: object) -> None:
    """Make a frozen trigger's `start`/`end` UTC and check them with `max_runs`."""
    for name in ("start", "end"):
        object.__setattr__(trigger, name, _opt_utc(getattr(trigger, name), name))
    _check_bounds(trigger.start, trigger.end, trigger.max_runs)  # type: ignore[attr-defined]


def _check_bounds(start: datetime | None, end: datetime | None, max_runs: int | None) -> None:
    if start is not None and end is not None and end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")


def _search_from(after: datetime, start: datetime | None) -> datetime:
    """The instant to search strictly after, so that a fire exactly at `start` counts."""
    after = _utc(after, "after")
    if start is not None and start > after:
        return start - _US
    return after


def _within(t: datetime | None, end: datetime | None) -> datetime | None:
    return None if t is None or (end is not None and t > end) else t


def _exhausted(runs_so_far: int, max_runs: int | None) -> bool:
    return max_runs is not None and runs_so_far >= max_runs


def _collect(times: Iterator[datetime], end: datetime, limit: int) -> list[datetime]:
    out: list[datetime] = []
    for t in times:
        if t > end or len(out) >= limit:
            break
        out.append(t)
    return out


def _bounds_text(start: datetime | None, end: datetime | None, max_runs: int | None) -> str:
    parts = []
    if start is not None:
        parts.append(f"from {start.isoformat()}")
    if end is not None:
        parts.append(f"until {end.isoformat()}")
    if max_runs is not None:
        parts.append(f"at most {max_runs} run{'s' if max_runs != 1 else ''}")
    return (", " + ", ".join(parts)) if parts else ""


# -- interval, after-finish, at, on-start, manual -------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntervalTrigger:
    """Every `every_ms` of elapsed time, at `anchor + n * every_ms` (DST-immune by construction).

    The grid is anchored at `anchor`, else at `start`, else at the Unix epoch, so every
    node and every restart computes the same nominal times ("every 5m" fires at :00, :05…).
    """

    every_ms: int
    anchor: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = None
    kind: ClassVar[TriggerKind] = TriggerKind.INTERVAL

    def __post_init__(self) -> None:
        if self.every_ms <= 0:
            raise ValueError(f"every must be > 0, got {self.every_ms} ms")
        for name in ("anchor", "start", "end"):
            object.__setattr__(self, name, _opt_utc(getattr(self, name), name))
        _check_bounds(self.start, self.end, self.max_runs)

    @property
    def origin(self) -> datetime:
        """The instant the grid of fire times is aligned to."""
        return self.anchor or self.start or EPOCH

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        if _exhausted(runs_so_far, self.max_runs):
            return None
        return _within(self._grid_after(_search_from(after, self.start)), self.end)

    def _grid_after(self, after: datetime) -> datetime:
        step = timedelta(milliseconds=self.every_ms)
        n = (after - self.origin) // step + 1
        return self.origin + n * step

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        end = _utc(end, "end")
        if self.end is not None:
            end = min(end, self.end)
        t = self.next_fire(start)
        step = timedelta(milliseconds=self.every_ms)
        out: list[datetime] = []
        while t is not None and t <= end and len(out) < limit:
            out.append(t)
            t += step
        return out

    def describe(self) -> str:
        anchor = "" if self.anchor is None else f" (anchored at {self.anchor.isoformat()})"
        return f"every {format_duration_ms(self.every_ms)}{anchor}{_bounds_text(self.start, self.end, self.max_runs)}"


@dataclass(frozen=True, slots=True)
class AfterFinishTrigger:
    """`delay_ms` after the previous run finished (a fixed delay, systemd `OnUnitInactiveSec`).

    The caller passes `last_finished`; without one (no run yet) the first fire is
    `delay_ms` after `after`, or `start` when that is later. While a run is in
    progress there is no next fire: ask again when it finishes.
    """

    delay_ms: int
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = None
    kind: ClassVar[TriggerKind] = TriggerKind.AFTER_FINISH

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay_ms} ms")
        _normalize_bounds(self)

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        if _exhausted(runs_so_far, self.max_runs):
            return None
        after = _utc(after, "after")
        delay = timedelta(milliseconds=self.delay_ms)
        base = after if last_finished is None else _utc(last_finished, "last_finished")
        t = base + delay
        if self.start is not None and t < self.start:
            t = self.start
        # Overdue (the supervisor was down): fire as soon as possible, never in the past.
        return _within(max(t, after + _US), self.end)

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Always empty: fire times depend on when runs finish, so none can be materialised."""
        return []

    def describe(self) -> str:
        return f"{format_duration_ms(self.delay_ms)} after the previous run finishes" + _bounds_text(
            self.start, self.end, self.max_runs
        )


@dataclass(frozen=True, slots=True)
class AtTrigger:
    """One-shot: each of `times` once (sorted, deduplicated, stored in UTC)."""

    times: tuple[datetime, ...]
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = None
    kind: ClassVar[TriggerKind] = TriggerKind.AT

    def __post_init__(self) -> None:
        if not self.times:
            raise ValueError("at needs at least one datetime")
        object.__setattr__(self, "times", tuple(sorted({_utc(t, "at") for t in self.times})))
        _normalize_bounds(self)

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        if _exhausted(runs_so_far, self.max_runs):
            return None
        after = _search_from(after, self.start)
        return _within(next((t for t in self.times if t > after), None), self.end)

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        lo = _search_from(start, self.start)
        return _collect((t for t in self.times if t > lo), min(_utc(end, "end"), self.end or end), limit)

    def describe(self) -> str:
        more = f" (+{len(self.times) - 1} more)" if len(self.times) > 1 else ""
        return f"at {self.times[0].isoformat()}{more}" + _bounds_text(self.start, self.end, self.max_runs)


@dataclass(frozen=True, slots=True)
class OnStartTrigger:
    """Once, `delay_ms` after the schedule starts (systemd `OnActiveSec`, River `RunOnStart`).

    The shell calls `next_fire(started_at, runs_so_far=<runs since that start>)`:
    the answer is `started_at + delay` for the first run, None afterwards.
    """

    delay_ms: int = 0
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = None
    kind: ClassVar[TriggerKind] = TriggerKind.ON_START

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"on_start delay must be >= 0, got {self.delay_ms} ms")
        _normalize_bounds(self)

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        if runs_so_far > 0 or _exhausted(runs_so_far, self.max_runs):
            return None
        t = _utc(after, "after") + max(timedelta(milliseconds=self.delay_ms), _US)
        if self.start is not None and t < self.start:
            t = self.start
        return _within(t, self.end)

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Always empty: an on-start fire is never missed or backfilled."""
        return []

    def describe(self) -> str:
        delay = f", after {format_duration_ms(self.delay_ms)}" if self.delay_ms else ""
        return f"once on start{delay}" + _bounds_text(self.start, self.end, self.max_runs)


@dataclass(frozen=True, slots=True)
class ManualTrigger:
    """Never fires by itself: only run-now and backfill start runs."""

    kind: ClassVar[TriggerKind] = TriggerKind.MANUAL

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        return None

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        return []

    def describe(self) -> str:
        return "manual only (run-now or backfill)"
