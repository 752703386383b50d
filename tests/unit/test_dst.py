"""Cron triggers across DST changes: the §5.3 rules on the days they matter (F-19, F-20)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]

from supervise.supervisor.core.cron import CronTrigger, DstGap, DstRepeat, default_dst_repeat


def fires_on(zone: str, day: str, expression: str, **kw: object) -> list[datetime]:
    """Every fire whose local date in `zone` is `day`, as UTC datetimes."""
    tz = ZoneInfo(zone)
    first = date.fromisoformat(day)
    start = datetime.combine(first, time(), tz).astimezone(UTC)
    end = datetime.combine(first + timedelta(days=1), time(), tz).astimezone(UTC)
    trigger = CronTrigger(expression, zone, **kw)  # type: ignore[arg-type]
    return trigger.fires_between(start - timedelta(microseconds=1), end - timedelta(microseconds=1), 500)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


SPRING = [
    # zone, day, expression, dst_gap, expected UTC fires that local day
    ("Europe/Berlin", "2025-03-30", "30 2 * * *", DstGap.SHIFT, ["2025-03-30T01:00"]),  # 03:00 CEST
    ("Europe/Berlin", "2025-03-30", "30 2 * * *", DstGap.SKIP, []),
    ("Europe/Berlin", "2025-03-30", "30 2 * * *", DstGap.SHIFT_BY_GAP, ["2025-03-30T01:30"]),  # 03:30 CEST
    ("Europe/Berlin", "2025-03-30", "*/15 2 * * *", DstGap.SHIFT, ["2025-03-30T01:00"]),  # four times -> one run
    ("America/New_York", "2025-03-09", "30 2 * * *", DstGap.SHIFT, ["2025-03-09T07:00"]),  # 03:00 EDT
    ("America/New_York", "2025-03-09", "30 2 * * *", DstGap.SKIP, []),
    ("America/New_York", "2025-03-09", "30 2 * * *", DstGap.SHIFT_BY_GAP, ["2025-03-09T07:30"]),
    ("Australia/Lord_Howe", "2025-10-05", "15 2 * * *", DstGap.SHIFT, ["2025-10-04T15:30"]),  # 02:30 +11
    ("Australia/Lord_Howe", "2025-10-05", "15 2 * * *", DstGap.SKIP, []),
    ("Australia/Lord_Howe", "2025-10-05", "15 2 * * *", DstGap.SHIFT_BY_GAP, ["2025-10-04T15:45"]),  # 02:45 +11
    ("Africa/Cairo", "2025-04-25", "0 0 * * *", DstGap.SHIFT, ["2025-04-24T22:00"]),  # midnight gap: 01:00 EEST
    ("Africa/Cairo", "2025-04-25", "30 0 * * *", DstGap.SHIFT, ["2025-04-24T22:00"]),
    ("Africa/Cairo", "2025-04-25", "0 0 * * *", DstGap.SKIP, []),
    ("America/Santiago", "2025-09-07", "0 0 * * *", DstGap.SHIFT, ["2025-09-07T04:00"]),  # 01:00 -03
    ("America/Santiago", "2025-09-07", "0 0 * * *", DstGap.SKIP, []),
]


@pytest.mark.parametrize(
    ("zone", "day", "expression", "gap", "expected"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}-{case[3]}") for case in SPRING],
)
def test_a_wall_time_in_the_spring_gap_follows_dst_gap(
    zone: str, day: str, expression: str, gap: DstGap, expected: list[str]
) -> None:
    assert fires_on(zone, day, expression, dst_gap=gap) == [utc(t) for t in expected]


FALL = [
    # zone, day, expression, dst_repeat (None = default), expected UTC fires
    ("Europe/Berlin", "2025-10-26", "30 2 * * *", None, ["2025-10-26T00:30"]),  # once: the CEST pass
    ("Europe/Berlin", "2025-10-26", "30 2 * * *", DstRepeat.ONCE, ["2025-10-26T00:30"]),
    ("Europe/Berlin", "2025-10-26", "30 2 * * *", DstRepeat.ONCE_LAST, ["2025-10-26T01:30"]),
    ("Europe/Berlin", "2025-10-26", "30 2 * * *", DstRepeat.BOTH, ["2025-10-26T00:30", "2025-10-26T01:30"]),
    ("America/New_York", "2025-11-02", "30 1 * * *", None, ["2025-11-02T05:30"]),  # F-20: once, not twice
    ("America/New_York", "2025-11-02", "30 1 * * *", DstRepeat.ONCE_LAST, ["2025-11-02T06:30"]),
    ("America/New_York", "2025-11-02", "30 1 * * *", DstRepeat.BOTH, ["2025-11-02T05:30", "2025-11-02T06:30"]),
    ("America/New_York", "2025-11-02", "30 2 * * *", None, ["2025-11-02T07:30"]),  # 02:30 happens once
    ("Australia/Lord_Howe", "2025-04-06", "45 1 * * *", None, ["2025-04-05T14:45"]),
    ("Australia/Lord_Howe", "2025-04-06", "45 1 * * *", DstRepeat.BOTH, ["2025-04-05T14:45", "2025-04-05T15:15"]),
    ("America/Santiago", "2025-04-05", "30 23 * * *", None, ["2025-04-06T02:30"]),
    ("America/Santiago", "2025-04-05", "30 23 * * *", DstRepeat.BOTH, ["2025-04-06T02:30", "2025-04-06T03:30"]),
]


@pytest.mark.parametrize(
    ("zone", "day", "expression", "repeat", "expected"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}-{case[3] or 'default'}") for case in FALL],
)
def test_a_wall_time_in_the_repeated_hour_follows_dst_repeat(
    zone: str, day: str, expression: str, repeat: DstRepeat | None, expected: list[str]
) -> None:
    assert fires_on(zone, day, expression, dst_repeat=repeat) == [utc(t) for t in expected]


@pytest.mark.parametrize(
    ("zone", "day", "expression", "count"),
    [
        pytest.param("Europe/Berlin", "2025-03-30", "0 * * * *", 23, id="berlin-spring-hourly"),
        pytest.param("Europe/Berlin", "2025-10-26", "0 * * * *", 25, id="berlin-fall-hourly"),
        pytest.param("America/New_York", "2025-03-09", "0 * * * *", 23, id="new-york-spring-hourly"),
        pytest.param("America/New_York", "2025-11-02", "0 * * * *", 25, id="new-york-fall-hourly"),
        pytest.param("Europe/Berlin", "2025-10-26", "*/30 * * * *", 50, id="berlin-fall-half-hourly"),
        pytest.param("Europe/Berlin", "2025-10-26", "@hourly", 25, id="berlin-fall-alias"),
        pytest.param("Australia/Lord_Howe", "2025-10-05", "0 * * * *", 24, id="lord-howe-spring-hourly"),
        pytest.param("Australia/Lord_Howe", "2025-04-06", "*/30 * * * *", 49, id="lord-howe-fall-half-hourly"),
        pytest.param("Europe/Berlin", "2025-06-01", "0 * * * *", 24, id="berlin-summer-hourly"),
    ],
)
def test_hourly_jobs_keep_their_real_time_rhythm_on_dst_days(zone: str, day: str, expression: str, count: int) -> None:
    fires = fires_on(zone, day, expression)
    assert len(fires) == count
    assert len(set(fires)) == count and fires == sorted(fires)


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        pytest.param("Europe/Berlin", "2025-10-27", "2025-10-27T19:00", id="berlin"),
        pytest.param("America/New_York", "2025-11-03", "2025-11-04T01:00", id="new-york"),
    ],
)
def test_a_20_00_job_runs_at_20_00_the_day_after_fall_back(zone: str, day: str, expected: str) -> None:
    # croniter#25 regression: it used to fire at 21:00 local the day after fall-back.
    assert fires_on(zone, day, "0 20 * * *") == [utc(expected)]
    before = datetime.combine(date.fromisoformat(day), time(), ZoneInfo(zone)) - timedelta(days=2)
    fires = CronTrigger("0 20 * * *", zone).fires_between(before, before + timedelta(days=4), 10)
    assert all(f.astimezone(ZoneInfo(zone)).hour == 20 for f in fires)


def test_the_day_after_spring_forward_runs_at_the_usual_wall_time() -> None:
    assert fires_on("Europe/Berlin", "2025-03-31", "30 2 * * *") == [utc("2025-03-31T00:30")]


@pytest.mark.parametrize(
    ("repeat", "expected"),
    [
        pytest.param(DstRepeat.BOTH, "2025-11-02T06:30", id="both-finds-the-second-pass"),
        pytest.param(DstRepeat.ONCE, "2025-11-03T06:30", id="once-waits-for-the-next-day"),
    ],
)
def test_next_fire_from_inside_the_repeated_hour(repeat: DstRepeat, expected: str) -> None:
    after = datetime(2025, 11, 2, 1, 45, tzinfo=ZoneInfo("America/New_York"))  # fold=0: the EDT pass
    trigger = CronTrigger("30 1 * * *", "America/New_York", dst_repeat=repeat)
    assert trigger.next_fire(after) == utc(expected)


def test_next_fire_after_a_shifted_fire_is_the_next_day() -> None:
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")
    shifted = trigger.next_fire(utc("2025-03-29T12:00"))
    assert shifted == utc("2025-03-30T01:00")
    assert trigger.next_fire(shifted) == utc("2025-03-31T00:30")


def test_shift_by_gap_found_from_just_after_the_jump() -> None:
    # 02:30 read as 03:30 CEST is still ahead of 03:10 CEST, though its wall time is behind.
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin", dst_gap=DstGap.SHIFT_BY_GAP)
    assert trigger.next_fire(utc("2025-03-30T01:10")) == utc("2025-03-30T01:30")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("30 2 * * *", DstRepeat.ONCE, id="fixed-hour"),
        pytest.param("0 1,13 * * *", DstRepeat.ONCE, id="hour-list"),
        pytest.param("0 1-3 * * *", DstRepeat.ONCE, id="hour-range"),
        pytest.param("0 * * * *", DstRepeat.BOTH, id="hour-wildcard"),
        pytest.param("*/10 */2 * * *", DstRepeat.BOTH, id="hour-step"),
        pytest.param("0 0-23/3 * * *", DstRepeat.BOTH, id="hour-range-step"),
        pytest.param("@hourly", DstRepeat.BOTH, id="alias-hourly"),
        pytest.param("@daily", DstRepeat.ONCE, id="alias-daily"),
        pytest.param("0 30 1 * * *", DstRepeat.ONCE, id="six-fields-seconds-first"),
    ],
)
def test_default_dst_repeat_follows_the_hour_field(expression: str, expected: DstRepeat) -> None:
    assert default_dst_repeat(expression) is expected
    assert CronTrigger(expression, "Europe/Berlin").repeat_rule is expected


DST_DAYS = [
    ("Europe/Berlin", "2025-03-30"),
    ("Europe/Berlin", "2025-10-26"),
    ("America/New_York", "2025-03-09"),
    ("America/New_York", "2025-11-02"),
]


@pytest.mark.parametrize(("zone", "day"), [pytest.param(z, d, id=f"{z}-{d}") for z, d in DST_DAYS])
@pytest.mark.parametrize("expression", ["30 2 * * *", "30 1 * * *", "0 3 * * *", "0 * * * *", "15 */2 * * *"])
def test_shift_and_both_agree_with_croniter_on_dst_days(zone: str, day: str, expression: str) -> None:
    # croniter natively shifts gap times and fires repeated ones twice; so do we with those rules.
    tz = ZoneInfo(zone)
    start = datetime.combine(date.fromisoformat(day), time(), tz) - timedelta(days=1)
    ours = CronTrigger(expression, zone, dst_gap=DstGap.SHIFT, dst_repeat=DstRepeat.BOTH)
    theirs = croniter(expression, start)
    expected = [theirs.get_next(datetime).astimezone(UTC) for _ in range(30)]
    assert ours.fires_between(start, expected[-1], 100) == expected
