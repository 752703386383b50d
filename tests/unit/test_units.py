"""Durations and sizes: what people write, what we keep, what we show back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervise.supervisor.core.units import (
    format_duration_ms,
    format_size_bytes,
    parse_duration_ms,
    parse_size_bytes,
    show_value,
    type_name,
)

DURATIONS = [
    ("250ms", 250),
    ("10s", 10_000),
    ("5m", 300_000),
    ("1h", 3_600_000),
    ("1d", 86_400_000),
    ("1m30s", 90_000),
    ("1h30m", 5_400_000),
    ("1d2h3m4s5ms", 93_784_005),
    ("1.5s", 1_500),
    (".5s", 500),
    ("0.25h", 900_000),
    ("0s", 0),
    ("0ms", 0),
    (" 10s ", 10_000),
    ("10 s", 10_000),
    ("1m 30s", 90_000),
    (10, 10_000),
    (0, 0),
    (0.25, 250),
    (0.1, 100),
    (1.5, 1_500),
    (timedelta(seconds=2, milliseconds=5), 2_005),
]


@pytest.mark.parametrize(("text", "ms"), DURATIONS, ids=[repr(d[0]) for d in DURATIONS])
def test_durations_are_read_into_milliseconds(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


BAD_DURATIONS = [
    ("10 sec", 'invalid duration "10 sec" (use 500ms, 10s, 5m, 1h)'),
    ("10", 'invalid duration "10" (use 500ms, 10s, 5m, 1h)'),
    ("", 'invalid duration "" (use 500ms, 10s, 5m, 1h)'),
    ("1m30", 'invalid duration "1m30" (use 500ms, 10s, 5m, 1h)'),
    ("s", 'invalid duration "s" (use 500ms, 10s, 5m, 1h)'),
    ("10S", 'invalid duration "10S" (use 500ms, 10s, 5m, 1h)'),
    ("1e3s", 'invalid duration "1e3s" (use 500ms, 10s, 5m, 1h)'),
    ("-5s", 'expected a duration >= 0, got "-5s"'),
    (-1, "expected a duration >= 0, got -1"),
    (-0.5, "expected a duration >= 0, got -0.5"),
    ("0.5ms", 'invalid duration "0.5ms" (the smallest step is 1ms)'),
    (0.0001, "invalid duration 0.0001 (the smallest step is 1ms)"),
    ([1], 'expected a duration like "10s", got list'),
    ({"s": 1}, 'expected a duration like "10s", got table'),
    (True, 'expected a duration like "10s", got boolean'),
    (None, 'expected a duration like "10s", got NoneType'),
    (float("inf"), 'expected a duration like "10s", got inf'),
    (float("nan"), 'expected a duration like "10s", got nan'),
]


@pytest.mark.parametrize(("value", "message"), BAD_DURATIONS, ids=[repr(d[0]) for d in BAD_DURATIONS])
def test_bad_durations_are_refused_with_a_message_for_people(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration_ms(value)
    assert str(caught.value) == message


FORMATTED_DURATIONS = [
    (0, "0s"),
    (1, "1ms"),
    (250, "250ms"),
    (1_000, "1s"),
    (1_500, "1.5s"),
    (1_001, "1.001s"),
    (10_000, "10s"),
    (120_000, "2m"),
    (90_000, "1m30s"),
    (61_500, "1m1.5s"),
    (5_400_000, "1h30m"),
    (3_600_500, "1h500ms"),
    (93_600_000, "1d2h"),
    (-1_500, "-1.5s"),
]


@pytest.mark.parametrize(("ms", "text"), FORMATTED_DURATIONS, ids=[d[1] for d in FORMATTED_DURATIONS])
def test_durations_are_formatted_for_people(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_a_formatted_duration_parses_back_to_the_same_value(ms: int) -> None:
    assert parse_duration_ms(format_duration_ms(ms)) == ms


SIZES = [
    (1024, 1024),
    (0, 0),
    ("512", 512),
    ("512B", 512),
    ("512k", 512 * 1024),
    ("512K", 512 * 1024),
    ("512KiB", 512 * 1024),
    ("512Ki", 512 * 1024),
    ("512KB", 512_000),
    ("512kb", 512_000),
    ("300MB", 300_000_000),
    ("300M", 300 * 1024**2),
    ("300MiB", 300 * 1024**2),
    ("1.5GiB", 1536 * 1024**2),
    ("1.5G", 1536 * 1024**2),
    ("2GB", 2_000_000_000),
    ("1TiB", 1024**4),
    ("1TB", 10**12),
    ("64 KiB", 65_536),
    ("1.3k", 1331),  # 1331.2 rounds to the nearest byte
]


@pytest.mark.parametrize(("text", "size"), SIZES, ids=[repr(s[0]) for s in SIZES])
def test_sizes_are_read_into_bytes(text: object, size: int) -> None:
    assert parse_size_bytes(text) == size


BAD_SIZES = [
    ("5 XB", 'invalid size "5 XB" (use 512KiB, 300MB, 1.5GiB or a number of bytes)'),
    ("MB", 'invalid size "MB" (use 512KiB, 300MB, 1.5GiB or a number of bytes)'),
    ("", 'invalid size "" (use 512KiB, 300MB, 1.5GiB or a number of bytes)'),
    ("300 MB free", 'invalid size "300 MB free" (use 512KiB, 300MB, 1.5GiB or a number of bytes)'),
    ("-5MB", 'expected a size >= 0, got "-5MB"'),
    (-1, "expected a size >= 0, got -1"),
    (1.5, 'expected a size like "300MB" or an integer of bytes, got 1.5'),
    (True, 'expected a size like "300MB" or an integer of bytes, got true'),
    (["1MB"], 'expected a size like "300MB" or an integer of bytes, got list'),
]


@pytest.mark.parametrize(("value", "message"), BAD_SIZES, ids=[repr(s[0]) for s in BAD_SIZES])
def test_bad_sizes_are_refused_with_a_message_for_people(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size_bytes(value)
    assert str(caught.value) == message


FORMATTED_SIZES = [
    (0, "0B"),
    (512, "512B"),
    (999, "999B"),
    (1000, "1KB"),
    (1001, "1001B"),
    (1024, "1KiB"),
    (1536, "1.5KiB"),
    (10 * 1024**2, "10MiB"),
    (1536 * 1024**2, "1.5GiB"),
    (300_000_000, "300MB"),
    (1_500_000, "1.5MB"),
    (1_234_567, "1.18MiB"),  # not exact in any unit: rounded
]


@pytest.mark.parametrize(("size", "text"), FORMATTED_SIZES, ids=[s[1] for s in FORMATTED_SIZES])
def test_sizes_are_formatted_for_people(size: int, text: str) -> None:
    assert format_size_bytes(size) == text


@given(st.integers(min_value=0, max_value=2**50))
def test_a_formatted_size_is_exact_or_within_half_a_percent(size: int) -> None:
    assert abs(parse_size_bytes(format_size_bytes(size)) - size) <= size * 0.005


@pytest.mark.parametrize(
    ("value", "name", "shown"),
    [
        ("three", "string", '"three"'),
        ('say "hi"', "string", '"say \\"hi\\""'),
        (3, "integer", "3"),
        (2.5, "float", "2.5"),
        (True, "boolean", "true"),
        ([1], "list", "list"),
        ({"a": 1}, "table", "table"),
        (timedelta(0), "timedelta", "timedelta"),
    ],
)
def test_values_are_named_as_toml_names_them(value: object, name: str, shown: str) -> None:
    assert type_name(value) == name
    assert show_value(value) == shown
