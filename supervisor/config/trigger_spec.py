"""Trigger specs: the trigger keys of a config table, turned into a `Trigger`.

`parse_trigger` reads the keys in `TRIGGER_KEYS` (TOML values or strings), converts
each one, and reports every problem by key in one `TriggerSpecError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, TypeVar

from supervise.supervisor.core.cron import CronTrigger, DstGap, DstRepeat, load_zone
from supervise.supervisor.core.triggers import (
    AfterFinishTrigger,
    AtTrigger,
    IntervalTrigger,
    ManualTrigger,
    OnStartTrigger,
    Trigger,
)
from supervise.supervisor.core.units import parse_duration_ms, show_value

TRIGGER_KEYS: Final = frozenset(
    [
        "every",
        "after_finish",
        "anchor",
        "cron",
        "timezone",
        "dst_gap",
        "dst_repeat",
        "dom_dow",
        "at",
        "on_start",
        "manual",
        "start",
        "end",
        "max_runs",
    ]
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
