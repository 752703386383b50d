"""Cron triggers: a cron expression on the wall clock of an IANA time zone, with explicit DST rules.

croniter finds the wall-clock times that match; `resolve_wall_time` maps each one to UTC
instants by the `dst_gap` and `dst_repeat` rules (scheduling.md §5.3). Also here: the
cron field checks, the default repeat rule and `load_zone`.
Pure: no I/O, no clock. Every datetime returned is aware and in UTC.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from supervise.supervisor.core.triggers import (
    _US,
    TriggerKind,
    _bounds_text,
    _collect,
    _exhausted,
    _normalize_bounds,
    _search_from,
    _utc,
    _within,
)


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
    "month": {
        m: i + 1
        for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
    },
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
    for name, value in zip(names, fields, strict=True):
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
    import difflib  # only for this message: not held by every daemon

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
        return f'cron "{self.expression}" in {self.timezone} ({dst})' + _bounds_text(
            self.start, self.end, self.max_runs
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
