"""Durations and byte sizes as people write them ("1m30s", "300MB"), as integers inside.

Pure: no I/O, no clock. Parsed once at the config edge; formatted back only for
messages. The `ValueError` messages are shown to users verbatim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from fractions import Fraction

__all__ = [
    "format_duration_ms",
    "format_size_bytes",
    "parse_duration_ms",
    "parse_size_bytes",
    "show_value",
    "type_name",
]

_DURATION_UNITS: Mapping[str, int] = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION_HINT = "(use 500ms, 10s, 5m, 1h)"

_SIZE_UNITS: Mapping[str, int] = {
    "": 1,
    "b": 1,
    # Single letters and the Kubernetes-style "Ki" are binary, as in systemd's
    # MemoryMax=, Docker's --memory, PM2 and supervisord.
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    # "KB" and friends are SI, decimal, as the IEC standard and the units say.
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE = re.compile(rf"\s*(-?)({_NUMBER})\s*([a-z]*)\s*", re.IGNORECASE)
_SIZE_HINT = "(use 512KiB, 300MB, 1.5GiB or a number of bytes)"


def type_name(value: object) -> str:
    """The TOML name of a value's type, for messages: "string", "list", "table"..."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    if isinstance(value, time):
        return "time"
    return type(value).__name__


def show_value(value: object) -> str:
    """A scalar as the user wrote it (`"three"`, `2.5`, `true`); anything else by type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    return type_name(value)


def parse_duration_ms(value: object) -> int:
    """Read a duration into whole milliseconds.

    Accepts strings with units ms, s, m, h, d, alone or combined ("250ms", "1.5s",
    "1m30s", "1h 30m"), plain numbers meaning seconds (10, 0.25) and `timedelta`.

    Raises:
        ValueError: with a message fit for the user, for booleans, negative or
            non-finite values, unknown units and sub-millisecond remainders.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str, timedelta)):
        raise ValueError(f'expected a duration like "10s", got {type_name(value)}')
    if isinstance(value, timedelta):
        amount = Fraction(value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds, 1000)
        shown = f'"{value}"'
    elif isinstance(value, str):
        amount = _parse_duration_text(value)
        shown = show_value(value)
    else:
        if not math.isfinite(value):
            raise ValueError(f'expected a duration like "10s", got {value!r}')
        # repr() then Fraction keeps 0.1 s exactly 100 ms, not 100.00000000000001.
        amount = Fraction(repr(value)) * 1000
        shown = repr(value)
    if amount < 0:
        raise ValueError(f"expected a duration >= 0, got {shown}")
    if amount.denominator != 1:
        raise ValueError(f"invalid duration {shown} (the smallest step is 1ms)")
    return int(amount)


def _parse_duration_text(text: str) -> Fraction:
    body = text.strip()
    negative = body.startswith("-")
    if negative:
        body = body[1:]
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"invalid duration {show_value(text)} {_DURATION_HINT}")
        total += Fraction(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    if not body.strip():
        raise ValueError(f"invalid duration {show_value(text)} {_DURATION_HINT}")
    return -total if negative else total


def format_duration_ms(ms: int) -> str:
    """A duration for people: "250ms", "1.5s", "10s", "2m", "1h30m", "1d2h".

    The result parses back to the same value with `parse_duration_ms`.
    """
    if ms < 0:
        return "-" + format_duration_ms(-ms)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    for unit in ("d", "h", "m"):
        count, ms = divmod(ms, _DURATION_UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        seconds, millis = divmod(ms, 1000)
        if seconds == 0 and parts:
            parts.append(f"{millis}ms")
        else:
            parts.append(f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s")
    return "".join(parts)


def parse_size_bytes(value: object) -> int:
    """Read a size into bytes: "512k", "300MB", "1.5GiB", "64 KiB", or an integer of bytes.

    KB, MB, GB, TB are decimal (1000); KiB, MiB, GiB, TiB, Ki..Ti and the single
    letters k, M, G, T are binary (1024). Units are case-insensitive. Fractions
    of a byte are rounded to the nearest byte.

    Raises:
        ValueError: with a message fit for the user.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f'expected a size like "300MB" or an integer of bytes, got {show_value(value)}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size >= 0, got {value}")
        return value
    match = _SIZE.fullmatch(value)
    unit = match[3].lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {show_value(value)} {_SIZE_HINT}")
    if match[1]:
        raise ValueError(f"expected a size >= 0, got {show_value(value)}")
    return round(Fraction(match[2]) * _SIZE_UNITS[unit])


def format_size_bytes(n: int) -> str:
    """A size for people: "512B", "10MiB", "1.5GiB", "300MB", "1.18MiB".

    The largest binary unit is used when it shows `n` exactly with at most two
    decimals, else the largest decimal unit likewise (both parse back to `n`);
    anything else is rounded to two decimals of the largest binary unit.
    """
    if n < 0:
        return "-" + format_size_bytes(-n)
    if n < 1000:
        return f"{n}B"
    binary = next(((name, f) for name, f in _BINARY if n >= f), None)
    decimal = next((name, f) for name, f in _DECIMAL if n >= f)
    for unit in (binary, decimal):
        if unit is not None and n * 100 % unit[1] == 0:
            return _decimals(n, unit[1]) + unit[0]
    if binary is None:
        return f"{n}B"
    return _decimals(n, binary[1]) + binary[0]


def _decimals(n: int, factor: int) -> str:
    return f"{n / factor:.2f}".rstrip("0").rstrip(".")


_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))
