"""Triggers: fire times of every kind, bounds, parsing and its error messages."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]

from supervise.supervisor.config.trigger_spec import TriggerSpecError, parse_trigger
from supervise.supervisor.core.cron import CronTrigger, DstGap, DstRepeat, load_zone
from supervise.supervisor.core.triggers import (
    EPOCH,
    AfterFinishTrigger,
    AtTrigger,
    IntervalTrigger,
    ManualTrigger,
    OnStartTrigger,
    Trigger,
    TriggerKind,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- interval -------------------------------------------------------------------------------------


def test_interval_is_aligned_to_the_epoch_by_default() -> None:
    trigger = IntervalTrigger(5 * 60_000)
    assert trigger.next_fire(at(2)) == at(5)
    assert trigger.next_fire(at(5)) == at(10)  # strictly after
    assert trigger.next_fire(datetime(2026, 1, 1, 13, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))) == at(5)


def test_interval_follows_its_anchor_then_its_start() -> None:
    assert IntervalTrigger(10 * 60_000, anchor=at(3)).next_fire(at(0)) == at(3)
    assert IntervalTrigger(10 * 60_000, anchor=at(3)).next_fire(at(3)) == at(13)
    started = IntervalTrigger(10 * 60_000, start=at(7))
    assert started.next_fire(at(0)) == at(7)  # start is inclusive and anchors the grid
    assert started.next_fire(at(7)) == at(17)


def test_interval_honours_end_and_max_runs() -> None:
    trigger = IntervalTrigger(60_000, end=at(3), max_runs=10)
    assert trigger.next_fire(at(2)) == at(3)  # end is inclusive
    assert trigger.next_fire(at(3)) is None
    assert trigger.next_fire(at(0), runs_so_far=10) is None
    assert trigger.next_fire(at(0), runs_so_far=9) == at(1)


def test_interval_counts_elapsed_time_across_dst() -> None:
    trigger = IntervalTrigger(3_600_000)
    start = datetime(2025, 10, 25, 22, 0, tzinfo=UTC)
    fires = trigger.fires_between(start, start + timedelta(hours=6), 100)
    assert [b - a for a, b in itertools.pairwise(fires)] == [timedelta(hours=1)] * 5


def test_interval_fires_between_is_start_exclusive_end_inclusive_and_limited() -> None:
    trigger = IntervalTrigger(60_000)
    assert trigger.fires_between(at(0), at(3), 10) == [at(1), at(2), at(3)]
    assert trigger.fires_between(at(0), at(100), 2) == [at(1), at(2)]
    assert IntervalTrigger(60_000, end=at(2)).fires_between(at(0), at(5), 10) == [at(1), at(2)]


def test_interval_rejects_a_non_positive_period_and_naive_bounds() -> None:
    with pytest.raises(ValueError, match="every must be > 0"):
        IntervalTrigger(0)
    with pytest.raises(ValueError, match="has no UTC offset"):
        IntervalTrigger(1000, start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="is before start"):
        IntervalTrigger(1000, start=at(5), end=at(1))


# -- after-finish, at, on-start, manual -----------------------------------------------------------


def test_after_finish_fires_a_delay_after_the_previous_run_finished() -> None:
    trigger = AfterFinishTrigger(10 * 60_000)
    assert trigger.next_fire(at(0)) == at(10)  # no run yet: a delay after `after`
    assert trigger.next_fire(at(0), last_finished=at(4)) == at(14)
    overdue = trigger.next_fire(at(60), last_finished=at(4))  # supervisor was down
    assert overdue == at(60) + timedelta(microseconds=1)
    assert trigger.fires_between(at(0), at(100), 10) == []
    assert AfterFinishTrigger(60_000, start=at(30)).next_fire(at(0)) == at(30)
    assert AfterFinishTrigger(60_000, max_runs=2).next_fire(at(0), runs_so_far=2) is None


def test_at_fires_each_time_once_in_order() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    trigger = AtTrigger((at(30), at(10), datetime(2026, 1, 1, 13, 10, tzinfo=berlin)))
    assert trigger.times == (at(10), at(30))  # deduplicated across zones, sorted, UTC
    assert trigger.next_fire(at(0)) == at(10)
    assert trigger.next_fire(at(10)) == at(30)
    assert trigger.next_fire(at(30)) is None
    assert trigger.fires_between(at(0), at(30), 10) == [at(10), at(30)]
    assert trigger.fires_between(at(10), at(20), 10) == []
    assert AtTrigger((at(10), at(30)), end=at(20)).next_fire(at(10)) is None


def test_at_needs_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="has no UTC offset"):
        AtTrigger((datetime(2026, 1, 1),))
    with pytest.raises(ValueError, match="at least one"):
        AtTrigger(())


def test_on_start_fires_once_after_its_delay() -> None:
    trigger = OnStartTrigger(10_000)
    assert trigger.next_fire(T0) == T0 + timedelta(seconds=10)
    assert trigger.next_fire(T0, runs_so_far=1) is None
    assert OnStartTrigger().next_fire(T0) == T0 + timedelta(microseconds=1)  # strictly after
    assert trigger.fires_between(T0, at(10), 5) == []


def test_manual_never_fires_by_itself() -> None:
    assert ManualTrigger().next_fire(T0) is None
    assert ManualTrigger().fires_between(T0, at(1000), 10) == []


def test_every_trigger_kind_satisfies_the_trigger_protocol() -> None:
    triggers: list[Trigger] = [
        IntervalTrigger(1000),
        AfterFinishTrigger(1000),
        CronTrigger("* * * * *"),
        AtTrigger((T0,)),
        OnStartTrigger(),
        ManualTrigger(),
    ]
    assert [t.kind for t in triggers] == list(TriggerKind)
    assert all(t.describe() for t in triggers)


# -- cron -----------------------------------------------------------------------------------------


def test_cron_honours_start_end_and_max_runs() -> None:
    trigger = CronTrigger("*/10 * * * *", start=at(20), end=at(40), max_runs=5)
    assert trigger.next_fire(at(0)) == at(20)  # start is inclusive
    assert trigger.next_fire(at(20)) == at(30)
    assert trigger.next_fire(at(40)) is None  # end is inclusive
    assert trigger.next_fire(at(0), runs_so_far=5) is None
    assert trigger.fires_between(at(0), at(100), 10) == [at(20), at(30), at(40)]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        pytest.param("30 * * * * *", T0, T0 + timedelta(seconds=30), id="six-fields-seconds-first"),
        pytest.param("0 0 12 1 1 * 2028", T0, datetime(2028, 1, 1, 12, tzinfo=UTC), id="seven-fields-year"),
        pytest.param("@hourly", T0, at(60), id="alias"),
        pytest.param("0 12 1 jan *", T0, datetime(2027, 1, 1, 12, tzinfo=UTC), id="month-name"),
        pytest.param("0 0 29 2 *", T0, datetime(2028, 2, 29, tzinfo=UTC), id="leap-day"),
        pytest.param("0 0 L * *", T0, datetime(2026, 1, 31, tzinfo=UTC), id="last-day-of-month"),
    ],
)
def test_cron_syntax_variants(expression: str, after: datetime, expected: datetime) -> None:
    assert CronTrigger(expression).next_fire(after) == expected


def test_cron_day_of_month_and_day_of_week_are_or_by_default_and_can_be_and() -> None:
    # 2026-01-01 is a Thursday; "13th or Friday" vs "Friday the 13th" (first in February 2026).
    assert CronTrigger("0 0 13 * 5").next_fire(T0) == datetime(2026, 1, 2, tzinfo=UTC)
    assert CronTrigger("0 0 13 * 5", day_or=False).next_fire(T0) == datetime(2026, 2, 13, tzinfo=UTC)


def test_cron_hash_fields_are_stable_per_schedule_id() -> None:
    a1 = CronTrigger("H * * * *", hash_id="backup").next_fire(T0)
    a2 = CronTrigger("H * * * *", hash_id="backup").next_fire(T0)
    spread = {CronTrigger("H * * * *", hash_id=f"job{i}").next_fire(T0) for i in range(20)}
    assert a1 == a2 and len(spread) > 5


def test_cron_in_a_zone_without_dst_is_a_fixed_offset() -> None:
    trigger = CronTrigger("0 2 * * *", "Asia/Kolkata")
    assert trigger.next_fire(T0) == datetime(2026, 1, 1, 20, 30, tzinfo=UTC)  # 02:00 IST = 20:30Z


def test_cron_that_never_matches_is_exhausted() -> None:
    assert CronTrigger("0 0 30 2 *").next_fire(T0) is None


def _random_expression(rng: random.Random) -> str:
    def field(lo: int, hi: int) -> str:
        kind = rng.randrange(5)
        if kind == 0:
            return "*"
        if kind == 1:
            return str(rng.randint(lo, hi))
        if kind == 2:
            return f"*/{rng.randint(2, max(2, (hi - lo) // 2))}"
        if kind == 3:
            a = rng.randint(lo, hi)
            return f"{a}-{rng.randint(a, hi)}"
        return ",".join(str(v) for v in sorted(rng.sample(range(lo, hi + 1), 3)))

    return " ".join([field(0, 59), field(0, 23), field(1, 28), field(1, 12), field(0, 6)])


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_next_fire_agrees_with_croniter_on_random_expressions(zone: str) -> None:
    rng = random.Random(20260101)
    tz = ZoneInfo(zone)
    for _ in range(300):
        expression = _random_expression(rng)
        after = EPOCH + timedelta(seconds=rng.randrange(1_600_000_000, 1_900_000_000))
        expected = croniter(expression, after.astimezone(tz)).get_next(datetime)
        assert CronTrigger(expression, zone).next_fire(after) == expected, expression


def test_cron_describe_names_the_zone_and_dst_rules() -> None:
    text = CronTrigger("0 2 * * *", "Europe/Berlin", dst_gap=DstGap.SKIP).describe()
    assert text == 'cron "0 2 * * *" in Europe/Berlin (DST gap: skip, repeated hour: once)'


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        pytest.param("61 * * * *", 'invalid cron expression "61 * * * *": minute must be 0-59', id="minute"),
        pytest.param("0 24 * * *", "hour must be 0-23", id="hour"),
        pytest.param("0 0 0 * *", "day-of-month must be 1-31", id="day-of-month"),
        pytest.param("0 0 * 13 *", "month must be 1-12", id="month"),
        pytest.param("0 0 * * 8", "day-of-week must be 0-7", id="day-of-week"),
        pytest.param("60 0 0 * * *", "second must be 0-59", id="second"),
        pytest.param("*/0 * * * *", "minute step must be >= 1", id="zero-step"),
        pytest.param("* * *", "expected 5 fields", id="too-few-fields"),
        pytest.param("@reboot", "use on_start = true", id="reboot"),
        pytest.param("0 0 * * mon#9", "invalid cron expression", id="croniter-rejects"),
        pytest.param("H * * * *", "hash_id", id="hash-without-id"),
    ],
)
def test_invalid_cron_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid cron expression") as caught:
        CronTrigger(expression)
    assert message in str(caught.value)


def test_an_unknown_time_zone_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match='unknown time zone "Europe/Berln"; did you mean "Europe/Berlin"\\?'):
        load_zone("Europe/Berln")
    with pytest.raises(ValueError, match='did you mean "America/New_York"'):
        load_zone("america/new_york")
    with pytest.raises(ValueError, match="use an IANA name"):
        load_zone("Nowhere/Xyzzy123")


# -- parse_trigger --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "description"),
    [
        pytest.param({"every": "5m"}, TriggerKind.INTERVAL, "every 5m", id="every"),
        pytest.param({"every": 90}, TriggerKind.INTERVAL, "every 1m30s", id="every-seconds-number"),
        pytest.param(
            {"every": "1h", "anchor": "2026-01-01T00:30:00Z"},
            TriggerKind.INTERVAL,
            "every 1h (anchored at 2026-01-01T00:30:00+00:00)",
            id="every-anchor",
        ),
        pytest.param(
            {"every": "10m", "after_finish": True},
            TriggerKind.AFTER_FINISH,
            "10m after the previous run finishes",
            id="after-finish",
        ),
        pytest.param(
            {"cron": "0 2 * * *", "timezone": "Asia/Kolkata"},
            TriggerKind.CRON,
            'cron "0 2 * * *" in Asia/Kolkata (DST gap: shift, repeated hour: once)',
            id="cron",
        ),
        pytest.param(
            {"cron": "0 * * * *", "timezone": "Europe/Berlin", "dst_gap": "skip", "dst_repeat": "once_last"},
            TriggerKind.CRON,
            'cron "0 * * * *" in Europe/Berlin (DST gap: skip, repeated hour: once_last)',
            id="cron-dst-knobs",
        ),
        pytest.param({"at": "2026-12-01T09:00:00+01:00"}, TriggerKind.AT, "at 2026-12-01T08:00:00+00:00", id="at-one"),
        pytest.param(
            {"at": ["2026-12-01T09:00:00+01:00", datetime(2026, 12, 2, tzinfo=UTC)]},
            TriggerKind.AT,
            "at 2026-12-01T08:00:00+00:00 (+1 more)",
            id="at-list-with-toml-datetime",
        ),
        pytest.param(
            {"at": "2026-07-01T09:00:00", "timezone": "Europe/Berlin"},
            TriggerKind.AT,
            "at 2026-07-01T07:00:00+00:00",
            id="at-naive-with-timezone",
        ),
        pytest.param({"on_start": True}, TriggerKind.ON_START, "once on start", id="on-start"),
        pytest.param({"on_start": "10s"}, TriggerKind.ON_START, "once on start, after 10s", id="on-start-delay"),
        pytest.param({"manual": True}, TriggerKind.MANUAL, "manual only (run-now or backfill)", id="manual"),
        pytest.param(
            {"every": "1d", "start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z", "max_runs": 3},
            TriggerKind.INTERVAL,
            "every 1d, from 2026-01-01T00:00:00+00:00, until 2026-02-01T00:00:00+00:00, at most 3 runs",
            id="bounds",
        ),
        pytest.param(
            {"every": "5m", "on_start": False, "command": ["true"]},
            TriggerKind.INTERVAL,
            "every 5m",
            id="other-keys-ignored",
        ),
    ],
)
def test_parse_trigger_builds_each_kind(spec: dict[str, object], kind: TriggerKind, description: str) -> None:
    trigger = parse_trigger(spec)
    assert trigger.kind is kind
    assert trigger.describe() == description


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"cron": "61 * * * *"}, 'cron: invalid cron expression "61 * * * *": minute must be 0-59', id="cron"
        ),
        pytest.param(
            {"cron": "0 2 * * *", "timezone": "Europe/Berln"},
            'timezone: unknown time zone "Europe/Berln"; did you mean "Europe/Berlin"?',
            id="timezone",
        ),
        pytest.param({}, "trigger: exactly one of every, cron, at, on_start, manual is required", id="none"),
        pytest.param(
            {"every": "5m", "cron": "* * * * *"},
            "trigger: exactly one of every, cron, at, on_start, manual is required; got every and cron",
            id="two",
        ),
        pytest.param({"every": "10 sec"}, 'every: invalid duration "10 sec" (use 500ms, 10s, 5m, 1h)', id="duration"),
        pytest.param({"every": "0s"}, "every: must be longer than 0", id="zero-period"),
        pytest.param(
            {"at": "2026-12-01T09:00:00"},
            'at: 2026-12-01T09:00:00 has no UTC offset; add one (e.g. "2026-12-01T09:00:00+01:00"',
            id="naive-at",
        ),
        pytest.param(
            {"at": "2026-03-29T02:30:00", "timezone": "Europe/Berlin"},
            "at: 2026-03-29T02:30:00 does not exist (DST gap) in Europe/Berlin",
            id="naive-at-in-gap",
        ),
        pytest.param(
            {"at": "2026-10-25T02:30:00", "timezone": "Europe/Berlin"},
            "at: 2026-10-25T02:30:00 happens twice (DST ends) in Europe/Berlin",
            id="naive-at-ambiguous",
        ),
        pytest.param({"at": "tomorrow"}, 'at: invalid datetime "tomorrow"', id="bad-at"),
        pytest.param({"at": []}, "at: expected a datetime or a non-empty list", id="empty-at"),
        pytest.param(
            {"every": "5m", "dst_gap": "skip"}, "dst_gap: only applies to cron schedules", id="dst-on-interval"
        ),
        pytest.param(
            {"cron": "* * * * *", "dst_gap": "jump"}, 'dst_gap: expected one of "shift", "skip"', id="bad-gap"
        ),
        pytest.param(
            {"cron": "* * * * *", "dst_repeat": "twice"}, 'dst_repeat: expected one of "once"', id="bad-repeat"
        ),
        pytest.param({"cron": "* * * * *", "after_finish": True}, "after_finish: only applies to every", id="af-cron"),
        pytest.param({"every": "5m", "max_runs": 0}, "max_runs: expected an integer >= 1, got 0", id="max-runs"),
        pytest.param({"every": "5m", "max_runs": True}, "max_runs: expected an integer >= 1", id="max-runs-bool"),
        pytest.param(
            {"every": "5m", "start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            "end: 2026-01-01T00:00:00+00:00 is before start",
            id="end-before-start",
        ),
        pytest.param({"cron": 5}, "cron: expected a non-empty string, got 5", id="cron-type"),
        pytest.param({"manual": "yes"}, 'manual: expected true or false, got "yes"', id="manual-type"),
    ],
)
def test_parse_trigger_errors_name_the_key(spec: dict[str, object], message: str) -> None:
    with pytest.raises(TriggerSpecError) as caught:
        parse_trigger(spec)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_parse_trigger_reports_every_problem_at_once() -> None:
    with pytest.raises(TriggerSpecError) as caught:
        parse_trigger({"every": "soon", "max_runs": -1, "timezone": "Mars/Olympus"})
    assert [key for key, _ in caught.value.problems] == ["timezone", "max_runs", "every"]


def test_parse_trigger_passes_the_schedule_id_to_hash_fields() -> None:
    a = parse_trigger({"cron": "H 3 * * *"}, schedule_id="backup")
    assert isinstance(a, CronTrigger) and a.hash_id == "backup"


def test_parse_trigger_dom_dow_and() -> None:
    trigger = parse_trigger({"cron": "0 0 13 * 5", "dom_dow": "and"})
    assert isinstance(trigger, CronTrigger) and trigger.day_or is False
    assert trigger.next_fire(T0) == datetime(2026, 2, 13, tzinfo=UTC)


def test_parse_trigger_reads_dst_knobs_as_enums() -> None:
    trigger = parse_trigger({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "dst_gap": "shift_by_gap"})
    assert isinstance(trigger, CronTrigger)
    assert trigger.dst_gap is DstGap.SHIFT_BY_GAP and trigger.repeat_rule is DstRepeat.ONCE
