"""Triggers: the instants at which a scheduled service fires.

Interval, after-finish, cron (croniter + an IANA zone, with explicit DST rules),
one-shot datetimes, on-start and manual, each clipped to `start`/`end`/`max_runs`
(scheduling.md §5.2-§5.3). Pure: no I/O, no clock; `after` is always passed in.
Every datetime returned is aware and in UTC.
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Final, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from supervise.supervisor.units import format_duration_ms, parse_duration_ms, show_value

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


class DstGap(StrEnum):
    """What a cron wall time that does not exist (spring forward) does."""

    SHIFT = "shift"  # run at the first instant after the gap (cronie, croniter); default
    SKIP = "skip"  # do not run that day (Temporal, Kubernetes, systemd)
    SHIFT_BY_GAP = "shift_by_gap"  # run the gap's length later: 02:30 -> 03:30 (APScheduler 3)


class DstRepeat(StrEnum):
    """What a cron wall time that happens twice (fall back) does."""

    ONCE = "once"  # first pass only (cronie, systemd); default for fixed-hour expressions
    ONCE_LAST = "once_last"  # second pass only (Quartz)
    BOTH = "both"  # both passes (Temporal, croniter); default when the hour is `*` or a step


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


# -- cron -----------------------------------------------------------------------------------------

_FIELDS: Final = {
    5: ("minute", "hour", "day-of-month", "month", "day-of-week"),
    6: ("second", "minute", "hour", "day-of-month", "month", "day-of-week"),
    7: ("second", "minute", "hour", "day-of-month", "month", "day-of-week", "year"),
}
_RANGES: Final = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day-of-month": (1, 31),
    "month": (1, 12),
    "day-of-week": (0, 7),
    "year": (1970, 2099),
}
_NAMES: Final = {
    "month": {m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])},
    "day-of-week": {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_ALIASES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_PLAIN_ITEM: Final = re.compile(r"^(\*|\?|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/(\d+))?$")
_MAX_WALL_STEPS: Final = 100_000


def _check_cron_fields(expression: str) -> list[str]:
    """Return the expression's fields, or raise ValueError naming the first bad field."""
    text = _ALIASES.get(expression.strip().lower(), expression.strip().lower())
    if text.startswith("@"):
        hint = "; use on_start = true" if text == "@reboot" else ""
        raise ValueError(f"unknown alias {text}{hint} (known: {', '.join(_ALIASES)})")
    fields = text.split()
    names = _FIELDS.get(len(fields))
    if names is None:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), "
            f"6 with a leading second, or 7 with a trailing year; got {len(fields)}"
        )
    for name, value in zip(names, fields):
        lo, hi = _RANGES[name]
        for item in value.split(","):
            m = _PLAIN_ITEM.match(item)
            if m is None:
                continue  # L, W, #, H: croniter checks those
            for part in (m.group(1), m.group(2)):
                if part is None or part in ("*", "?"):
                    continue
                number = _NAMES.get(name, {}).get(part[:3]) if part.isalpha() else None
                if number is None and part.isdigit():
                    number = int(part)
                if number is None:
                    continue
                if not lo <= number <= hi:
                    raise ValueError(f"{name} must be {lo}-{hi}")
            if m.group(3) is not None and int(m.group(3)) == 0:
                raise ValueError(f"{name} step must be >= 1")
    return fields


def default_dst_repeat(expression: str) -> DstRepeat:
    """`both` when the hour field is `*` or a step (hourly jobs keep their rhythm), else `once`.

    That is cronie's rule: jobs with a granularity of one hour or less run
    normally through a repeated hour; fixed-time jobs run once (§5.3).
    """
    fields = _check_cron_fields(expression)
    hour = fields[1] if len(fields) == 5 else fields[2]
    return DstRepeat.BOTH if hour.startswith("*") or "/" in hour else DstRepeat.ONCE


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or ValueError with the closest known name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    known = available_timezones()
    folded = {k.lower(): k for k in known}
    guess = folded.get(name.lower()) or next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.6)), None)
    hint = f'; did you mean "{guess}"?' if guess else ' (use an IANA name such as "Europe/Berlin" or "UTC")'
    raise ValueError(f'unknown time zone "{name}"{hint}')


@dataclass(frozen=True, slots=True)
class CronTrigger:
    """A cron expression evaluated on the wall clock of `timezone`, with explicit DST rules.

    croniter walks the *wall-clock* times that match the expression (naive, so it
    never sees a DST jump); each wall time is then mapped to instants by
    `dst_gap` (the time does not exist) and `dst_repeat` (it exists twice).
    `dst_repeat=None` picks the §5.3 default from the hour field (`repeat_rule`).
    Six fields put seconds first (Quartz, Spring); seven add a trailing year.
    """

    expression: str
    timezone: str = "UTC"
    dst_gap: DstGap = DstGap.SHIFT
    dst_repeat: DstRepeat | None = None
    day_or: bool = True  # Vixie: a day matches day-of-month OR day-of-week when both are set
    hash_id: str | None = None  # seeds croniter's `H` fields (pass the schedule id)
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = None
    kind: ClassVar[TriggerKind] = TriggerKind.CRON
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _seconds_first: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from croniter import CroniterError, croniter  # type: ignore[import-untyped]  # slow import: only for cron

        try:
            fields = _check_cron_fields(self.expression)
            croniter(
                self.expression,
                datetime(2000, 1, 1),
                day_or=self.day_or,
                hash_id=self.hash_id,
                second_at_beginning=len(fields) > 5,
            )
        except (CroniterError, ValueError, TypeError) as exc:
            raise ValueError(f'invalid cron expression "{self.expression}": {exc}') from None
        object.__setattr__(self, "_seconds_first", len(fields) > 5)
        object.__setattr__(self, "_zone", load_zone(self.timezone))
        object.__setattr__(self, "dst_gap", DstGap(self.dst_gap))
        if self.dst_repeat is not None:
            object.__setattr__(self, "dst_repeat", DstRepeat(self.dst_repeat))
        _normalize_bounds(self)

    @property
    def repeat_rule(self) -> DstRepeat:
        """`dst_repeat`, or its default for this expression when it was left unset."""
        return self.dst_repeat or default_dst_repeat(self.expression)

    def next_fire(
        self, after: datetime, *, runs_so_far: int = 0, last_finished: datetime | None = None
    ) -> datetime | None:
        if _exhausted(runs_so_far, self.max_runs):
            return None
        return _within(next(self.iter_fires(after), None), self.end)

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        end = _utc(end, "end")
        return _collect(self.iter_fires(start), min(end, self.end or end), limit)

    def iter_fires(self, after: datetime) -> Iterator[datetime]:
        """Fire times strictly after `after` (and from `start`), ascending, without an end."""
        from croniter import CroniterBadDateError, croniter

        after = _search_from(after, self.start)
        zone = self._zone
        wall_from = (after + _offset_extreme(zone, after, min)).replace(tzinfo=None)
        walls = croniter(
            self.expression,
            wall_from,
            day_or=self.day_or,
            hash_id=self.hash_id,
            second_at_beginning=self._seconds_first,
        )
        pending: list[datetime] = []
        last: datetime | None = None
        repeat = self.repeat_rule
        for _ in range(_MAX_WALL_STEPS):
            try:
                wall: datetime = walls.get_next(datetime)
            except CroniterBadDateError:
                break
            # No later wall time can resolve to an instant before `floor`.
            floor = (wall - _offset_extreme(zone, wall.replace(tzinfo=UTC), max)).replace(tzinfo=UTC)
            while pending and pending[0] < floor:
                t = heapq.heappop(pending)
                if t != last:
                    last = t
                    yield t
            for t in resolve_wall_time(wall, zone, self.dst_gap, repeat):
                if t > after:
                    heapq.heappush(pending, t)
        while pending:
            t = heapq.heappop(pending)
            if t != last:
                last = t
                yield t

    def describe(self) -> str:
        dst = f"DST gap: {self.dst_gap}, repeated hour: {self.repeat_rule}"
        return (
            f'cron "{self.expression}" in {self.timezone} ({dst})'
            + _bounds_text(self.start, self.end, self.max_runs)
        )


def _offset_extreme(zone: ZoneInfo, around: datetime, pick: Callable[[list[timedelta]], timedelta]) -> timedelta:
    """The smallest or largest UTC offset of `zone` within about a day of `around`."""
    offsets = []
    for hours in (-26, -13, 0, 13, 26):
        offset = (around + timedelta(hours=hours)).astimezone(zone).utcoffset()
        offsets.append(offset if offset is not None else timedelta(0))
    return pick(offsets)


def resolve_wall_time(wall: datetime, zone: ZoneInfo, gap: DstGap, repeat: DstRepeat) -> list[datetime]:
    """Map a naive wall-clock time in `zone` to the UTC instants it fires at.

    Args:
        wall: a naive local time that matched the cron expression.
        gap: the rule when `wall` falls in a spring-forward gap.
        repeat: the rule when `wall` happens twice (fall back).
    Returns:
        Zero, one or two UTC instants, ascending.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) == wall:  # exists twice: fall back
        if repeat is DstRepeat.ONCE:
            return [first]
        if repeat is DstRepeat.ONCE_LAST:
            return [second]
        return [first, second]
    # Does not exist. fold=0 reads it with the offset from before the jump (PEP 495),
    # which is what "shift by the gap" means; fold=1 lands before the jump.
    if gap is DstGap.SKIP:
        return []
    if gap is DstGap.SHIFT_BY_GAP:
        return [first]
    return [_transition_between(zone, second, first)]


def _transition_between(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] whose UTC offset is the one `after` has."""
    target = after.astimezone(zone).utcoffset()
    lo, hi = before, after
    while hi - lo > _US:
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return hi


# -- parsing config keys --------------------------------------------------------------------------

TRIGGER_KEYS: Final = frozenset(
    ["every", "after_finish", "anchor", "cron", "timezone", "dst_gap", "dst_repeat", "dom_dow", "at", "on_start", "manual", "start", "end", "max_runs"]
)
"""The config keys `parse_trigger` reads; a loader's allow-list includes them."""
_KIND_KEYS: Final = ("every", "cron", "at", "on_start", "manual")


class TriggerSpecError(ValueError):
    """A trigger spec with one or more problems, each tied to its config key.

    `problems` holds `(key, problem)` pairs so the config loader can prefix its
    own path (`services.report.cron: …`).
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {problem}" for key, problem in problems))


def parse_trigger(spec: Mapping[str, object], *, schedule_id: str | None = None) -> Trigger:
    """Build a trigger from config-style keys (TOML values or strings).

    Keys outside `TRIGGER_KEYS` are ignored, so a loader may pass a whole service
    table and keep its own unknown-key check. Naive datetimes (no UTC offset) are
    read in `timezone` when that key is set, and rejected otherwise.

    Args:
        spec: e.g. `{"cron": "0 2 * * *", "timezone": "Asia/Kolkata"}`.
        schedule_id: seeds `H` fields in cron expressions.
    Raises:
        TriggerSpecError: (a ValueError) listing every problem by key.
    """
    keys = _KeyReader(spec)
    zone = keys.get("timezone", _as_zone_name)
    kinds = [k for k in _KIND_KEYS if k in spec and spec[k] is not False]
    if len(kinds) != 1:
        got = f"; got {' and '.join(kinds)}" if kinds else ""
        keys.problem("trigger", f"exactly one of every, cron, at, on_start, manual is required{got}")
    kind = kinds[0] if len(kinds) == 1 else None
    for key, needs in _ONLY_WITH.items():
        if key in spec and kind is not None and kind != needs:
            keys.problem(key, f"only applies to {needs} schedules")
    start, end, anchor = (keys.get(k, lambda v: _as_datetime(v, zone)) for k in ("start", "end", "anchor"))
    max_runs = keys.get("max_runs", _as_positive_int)
    after_finish = keys.get("after_finish", _as_bool)
    if start is not None and end is not None and end < start:
        keys.problem("end", f"{end.isoformat()} is before start {start.isoformat()}")
    if after_finish and anchor is not None:
        keys.problem("anchor", "has no meaning with after_finish = true (the delay counts from each finish)")

    trigger: Trigger | None = None
    if kind == "every":
        every = keys.get("every", _as_positive_duration)
        if every is not None and after_finish:
            trigger = keys.build("every", AfterFinishTrigger, every, start=start, end=end, max_runs=max_runs)
        elif every is not None:
            trigger = keys.build("every", IntervalTrigger, every, anchor, start=start, end=end, max_runs=max_runs)
    elif kind == "cron":
        expression = keys.get("cron", _as_text)
        gap = keys.get("dst_gap", lambda v: _as_choice(v, DstGap)) or DstGap.SHIFT
        repeat = keys.get("dst_repeat", lambda v: _as_choice(v, DstRepeat))
        dom_dow = keys.get("dom_dow", lambda v: _as_choice(v, _DomDow))
        if expression is not None:
            trigger = keys.build(
                "cron",
                CronTrigger,
                expression,
                timezone=zone or "UTC",
                dst_gap=gap,
                dst_repeat=repeat,
                day_or=dom_dow is not _DomDow.AND,
                hash_id=schedule_id,
                start=start,
                end=end,
                max_runs=max_runs,
            )
    elif kind == "at":
        times = keys.get("at", lambda v: _as_datetimes(v, zone))
        if times is not None:
            trigger = keys.build("at", AtTrigger, times, start=start, end=end, max_runs=max_runs)
    elif kind == "on_start":
        delay = keys.get("on_start", _as_on_start)
        if delay is not None:
            trigger = keys.build("on_start", OnStartTrigger, delay, start=start, end=end, max_runs=max_runs)
    elif kind == "manual" and keys.get("manual", _as_bool) is not None:
        trigger = ManualTrigger()
    if keys.problems or trigger is None:
        raise TriggerSpecError(keys.problems or [("trigger", "could not be built")])
    return trigger


_ONLY_WITH: Final = {
    "after_finish": "every",
    "anchor": "every",
    "dom_dow": "cron",
    "dst_gap": "cron",
    "dst_repeat": "cron",
}
_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)


class _KeyReader:
    """Converts keys one by one and collects every problem instead of stopping at the first."""

    def __init__(self, spec: Mapping[str, object]) -> None:
        self.spec = spec
        self.problems: list[tuple[str, str]] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append((key, text))

    def get(self, key: str, convert: Callable[[object], _T]) -> _T | None:
        if key not in self.spec:
            return None
        try:
            return convert(self.spec[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return None

    def build(self, key: str, factory: Callable[..., Trigger], *args: object, **kwargs: object) -> Trigger | None:
        if self.problems:
            return None
        try:
            return factory(*args, **kwargs)
        except ValueError as exc:
            self.problem(key, str(exc))
            return None


class _DomDow(StrEnum):
    OR = "or"
    AND = "and"


def _as_text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {show_value(value)}")
    return value


def _as_zone_name(value: object) -> str:
    name = _as_text(value)
    load_zone(name)
    return name


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show_value(value)}")
    return value


def _as_positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {show_value(value)}")
    return value


def _as_positive_duration(value: object) -> int:
    ms = parse_duration_ms(value)
    if ms <= 0:
        raise ValueError(f"must be longer than 0, got {show_value(value)}")
    return ms


def _as_on_start(value: object) -> int:
    if value is True:
        return 0
    return parse_duration_ms(value)


def _as_choice(value: object, enum: type[_E]) -> _E:
    for member in enum:
        if value == member.value:
            return member
    allowed = ", ".join(f'"{m}"' for m in enum)
    raise ValueError(f"expected one of {allowed}; got {show_value(value)}")


def _as_datetimes(value: object, zone: str | None) -> tuple[datetime, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a datetime or a non-empty list of them")
    return tuple(_as_datetime(v, zone) for v in items)


def _as_datetime(value: object, zone: str | None) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f'invalid datetime "{value}" (use ISO 8601, e.g. "2026-12-01T09:00:00+01:00")') from None
    else:
        raise ValueError(f"expected an ISO 8601 datetime, got {show_value(value)}")
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    shown = moment.isoformat()
    if zone is None:
        raise ValueError(
            f'{shown} has no UTC offset; add one (e.g. "{shown}+01:00" or "{shown}Z") '
            'or set timezone = "Area/City" to read it as local time there'
        )
    tz = load_zone(zone)
    first = moment.replace(tzinfo=tz, fold=0)
    second = moment.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        exists = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == moment
        problem = "happens twice (DST ends)" if exists else "does not exist (DST gap)"
        raise ValueError(f"{shown} {problem} in {zone}; write it with a UTC offset")
    return first.astimezone(UTC)


