"""Cron expressions as systemd `OnCalendar=` values, where the two mean the same times.

Translated: the five standard fields with numbers, names, `*`, lists, ranges
and steps, and the @hourly ... @yearly aliases. Refused, with the reason:
anything else (L, W, #, H, ?, @reboot, a seconds field), and an expression
restricting both day-of-month and day-of-week, which cron matches when
*either* does and systemd only when *both* do.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CronNotTranslatable", "cron_to_oncalendar"]

_ALIASES: Final = {
    "@hourly": "hourly",
    "@daily": "daily",
    "@midnight": "daily",
    "@weekly": "weekly",
    "@monthly": "monthly",
    "@yearly": "yearly",
    "@annually": "yearly",
}
_MONTHS: Final = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS: Final = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
# (name, lowest, highest) of minute, hour, day of month, month, day of week
_FIELDS: Final = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


class CronNotTranslatable(ValueError):
    """The expression has no `OnCalendar=` equivalent; the message says why."""


def cron_to_oncalendar(expression: str, timezone: str | None = None) -> str:
    """`"30 2 * * 1-5"` -> `"Mon..Fri *-*-* 02:30:00"`; raises CronNotTranslatable."""
    text = expression.strip()
    if text.lower() in _ALIASES:
        calendar = _ALIASES[text.lower()]
        return f"{calendar} {timezone}" if timezone else calendar
    fields = text.split()
    if len(fields) != 5:
        raise CronNotTranslatable(f'cron "{expression}": only 5-field expressions and @hourly ... @yearly translate')
    values = [_values(field, *spec) for field, spec in zip(fields, _FIELDS, strict=True)]
    minute, hour, dom, month, dow = values
    if dom is not None and dow is not None:
        raise CronNotTranslatable(
            f'cron "{expression}" restricts both day of month and day of week: cron runs when either matches, '
            "OnCalendar= only when both do"
        )
    days = "" if dow is None else ",".join(_DAYS[d % 7] for d in sorted({d % 7 for d in dow})) + " "
    date = f"*-{_join(month, 2)}-{_join(dom, 2)}"
    calendar = f"{days}{date} {_join(hour, 2)}:{_join(minute, 2)}:00"
    return f"{calendar} {timezone}" if timezone else calendar


def _join(values: list[int] | None, width: int) -> str:
    return "*" if values is None else ",".join(f"{v:0{width}d}" for v in values)


def _values(field: str, name: str, low: int, high: int) -> list[int] | None:
    """The values a cron field matches (None for `*`); raises CronNotTranslatable."""
    if field == "*":
        return None
    found: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = _number(step_text, name, part) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _number(first, name, part), _number(last, name, part)
        else:
            start = _number(base, name, part)
            end = high if step_text else start
        if not low <= start <= end <= high or step < 1:
            raise CronNotTranslatable(f'cron {name} "{part}": out of range {low}-{high}')
        found.update(range(start, end + 1, step))
    return sorted(found)


def _number(text: str, name: str, part: str) -> int:
    if text.isdigit():
        return int(text)
    names = _MONTHS if name == "month" else [d.lower() for d in _DAYS] if name == "day of week" else []
    if text.lower() in names:
        return names.index(text.lower()) + (1 if name == "month" else 0)
    raise CronNotTranslatable(f'cron {name} "{part}": "{text}" has no OnCalendar= equivalent')
