"""Scheduling policies: overlap, catch-up, resume, deadline, jitter, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from supervise.supervisor.core.policies import (
    Backoff,
    CatchupDecision,
    CatchupPolicy,
    JitterMode,
    OverlapAction,
    OverlapDecision,
    OverlapPolicy,
    ResumePolicy,
    RetryPolicy,
    decide_catchup,
    decide_overlap,
    decide_resume,
    is_past_deadline,
    jitter_ms,
    next_retry_delay_ms,
    should_retry,
)
from supervise.supervisor.core.runs import RunState, SkipReason

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
P = OverlapPolicy
A = OverlapAction


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


# -- overlap --------------------------------------------------------------------------------------

OVERLAP = [
    # policy, running, buffered, max_concurrent, buffer_limit -> action, reason, stop_count
    ("free-slot-skip", P.SKIP, 0, 0, 1, 10, A.START, None, 0),
    ("busy-skip", P.SKIP, 1, 0, 1, 10, A.SKIP, SkipReason.OVERLAP, 0),
    ("busy-skip-two-slots", P.SKIP, 1, 0, 2, 10, A.START, None, 0),
    ("buffer-one-empty", P.BUFFER_ONE, 1, 0, 1, 10, A.BUFFER, None, 0),
    ("buffer-one-full", P.BUFFER_ONE, 1, 1, 1, 10, A.SKIP, SkipReason.BUFFER_FULL, 0),
    ("buffer-one-queue-first", P.BUFFER_ONE, 0, 1, 1, 10, A.SKIP, SkipReason.BUFFER_FULL, 0),
    ("buffer-all-room", P.BUFFER_ALL, 1, 9, 1, 10, A.BUFFER, None, 0),
    ("buffer-all-full", P.BUFFER_ALL, 1, 10, 1, 10, A.SKIP, SkipReason.BUFFER_FULL, 0),
    ("buffer-all-keeps-order", P.BUFFER_ALL, 0, 2, 1, 10, A.BUFFER, None, 0),
    ("buffer-all-free", P.BUFFER_ALL, 0, 0, 1, 10, A.START, None, 0),
    ("cancel-other", P.CANCEL_OTHER, 1, 0, 1, 10, A.CANCEL_RUNNING_THEN_START, None, 1),
    ("cancel-other-free", P.CANCEL_OTHER, 0, 0, 1, 10, A.START, None, 0),
    ("cancel-other-over-limit", P.CANCEL_OTHER, 3, 0, 2, 10, A.CANCEL_RUNNING_THEN_START, None, 2),
    ("terminate-other", P.TERMINATE_OTHER, 1, 0, 1, 10, A.TERMINATE_RUNNING_THEN_START, None, 1),
    ("allow-all-unlimited", P.ALLOW_ALL, 50, 0, None, 10, A.START, None, 0),
    ("allow-all-under-max", P.ALLOW_ALL, 2, 0, 3, 10, A.START, None, 0),
    ("allow-all-at-max", P.ALLOW_ALL, 3, 0, 3, 10, A.SKIP, SkipReason.OVERLAP, 0),
]


@pytest.mark.parametrize(
    ("policy", "running", "buffered", "max_concurrent", "buffer_limit", "action", "reason", "stop_count"),
    [pytest.param(*case[1:], id=case[0]) for case in OVERLAP],
)
def test_decide_overlap(
    policy: OverlapPolicy,
    running: int,
    buffered: int,
    max_concurrent: int | None,
    buffer_limit: int,
    action: OverlapAction,
    reason: SkipReason | None,
    stop_count: int,
) -> None:
    decision = decide_overlap(
        policy, running=running, buffered=buffered, max_concurrent=max_concurrent, buffer_limit=buffer_limit
    )
    assert (decision.action, decision.reason, decision.stop_count) == (action, reason, stop_count)


def test_an_overlap_skip_explains_itself() -> None:
    decision = decide_overlap(P.BUFFER_ALL, running=1, buffered=4, max_concurrent=1, buffer_limit=4)
    assert decision == OverlapDecision(
        A.SKIP, SkipReason.BUFFER_FULL, detail="1 running, max_concurrent = 1; buffer holds 4 (limit 4)"
    )


# -- catch-up -------------------------------------------------------------------------------------

MISSED = [ago(50), ago(40), ago(30), ago(20), ago(10)]


@pytest.mark.parametrize(
    ("policy", "window_min", "max_catchup", "run", "skipped"),
    [
        pytest.param(
            CatchupPolicy.LATEST,
            35,
            100,
            [ago(10)],
            [
                (ago(50), SkipReason.MISSED),
                (ago(40), SkipReason.MISSED),
                (ago(30), SkipReason.SUPERSEDED),
                (ago(20), SkipReason.SUPERSEDED),
            ],
            id="latest-in-window",
        ),
        pytest.param(
            CatchupPolicy.EARLIEST,
            35,
            100,
            [ago(30)],
            [
                (ago(50), SkipReason.MISSED),
                (ago(40), SkipReason.MISSED),
                (ago(20), SkipReason.SUPERSEDED),
                (ago(10), SkipReason.SUPERSEDED),
            ],
            id="earliest-in-window",
        ),
        pytest.param(
            CatchupPolicy.ALL,
            None,
            100,
            MISSED,
            [],
            id="all-no-window",
        ),
        pytest.param(
            CatchupPolicy.ALL,
            None,
            2,
            [ago(20), ago(10)],
            [
                (ago(50), SkipReason.CATCHUP_LIMIT),
                (ago(40), SkipReason.CATCHUP_LIMIT),
                (ago(30), SkipReason.CATCHUP_LIMIT),
            ],
            id="all-capped-keeps-newest",
        ),
        pytest.param(
            CatchupPolicy.NONE,
            None,
            100,
            [],
            [(t, SkipReason.MISSED) for t in MISSED],
            id="none",
        ),
        pytest.param(
            CatchupPolicy.LATEST,
            5,
            100,
            [],
            [(t, SkipReason.MISSED) for t in MISSED],
            id="all-outside-window",
        ),
        pytest.param(
            CatchupPolicy.LATEST,
            None,
            0,
            [],
            [(t, SkipReason.CATCHUP_LIMIT) for t in MISSED],
            id="max-catchup-zero",
        ),
        pytest.param(
            CatchupPolicy.LATEST,
            10,
            100,
            [ago(10)],
            [(t, SkipReason.MISSED) for t in MISSED[:4]],
            id="window-is-inclusive",
        ),
    ],
)
def test_decide_catchup(
    policy: CatchupPolicy,
    window_min: int | None,
    max_catchup: int,
    run: list[datetime],
    skipped: list[tuple[datetime, SkipReason]],
) -> None:
    window_ms = None if window_min is None else window_min * 60_000
    shuffled = [MISSED[3], MISSED[0], MISSED[4], MISSED[1], MISSED[2], MISSED[0]]  # order and duplicates do not matter
    decision = decide_catchup(shuffled, now=NOW, policy=policy, window_ms=window_ms, max_catchup=max_catchup)
    assert decision == CatchupDecision(run=run, skipped=skipped)


def test_catchup_accounts_for_every_missed_time_exactly_once() -> None:
    for policy in CatchupPolicy:
        decision = decide_catchup(MISSED, now=NOW, policy=policy, window_ms=25 * 60_000, max_catchup=1)
        assert sorted(decision.run + [t for t, _ in decision.skipped]) == MISSED


def test_nothing_missed_means_nothing_to_do() -> None:
    assert decide_catchup([], now=NOW, policy=CatchupPolicy.ALL, window_ms=None, max_catchup=5) == CatchupDecision(
        [], []
    )


@pytest.mark.parametrize(
    ("policy", "run", "reason"),
    [
        pytest.param(ResumePolicy.SKIP_MISSED, [], SkipReason.PAUSED, id="skip-missed"),
        pytest.param(ResumePolicy.CATCH_UP, [ago(10)], SkipReason.SUPERSEDED, id="catch-up"),
    ],
)
def test_decide_resume(policy: ResumePolicy, run: list[datetime], reason: SkipReason) -> None:
    decision = decide_resume(
        [ago(20), ago(10)], now=NOW, policy=policy, catchup=CatchupPolicy.LATEST, window_ms=None, max_catchup=10
    )
    assert decision.run == run
    assert decision.skipped[0] == (ago(20), reason)


# -- deadline -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("late_ms", "deadline_ms", "past"),
    [
        pytest.param(0, 1000, False, id="on-time"),
        pytest.param(1000, 1000, False, id="exactly-at-deadline"),
        pytest.param(1001, 1000, True, id="one-ms-late"),
        pytest.param(10**9, None, False, id="no-deadline"),
        pytest.param(1, 0, True, id="zero-deadline"),
    ],
)
def test_is_past_deadline(late_ms: int, deadline_ms: int | None, past: bool) -> None:
    jittered = NOW - timedelta(milliseconds=late_ms)
    assert is_past_deadline(jittered, deadline_ms, NOW) is past


# -- jitter ---------------------------------------------------------------------------------------


def test_jitter_is_deterministic_per_schedule_and_time() -> None:
    a = jitter_ms("backup", NOW, 60_000)
    assert a == jitter_ms("backup", NOW, 60_000)
    assert a == jitter_ms("backup", NOW.astimezone(timezone(timedelta(hours=5))), 60_000)  # same instant
    offsets = {jitter_ms("backup", NOW + timedelta(hours=h), 60_000) for h in range(50)}
    schedules = {jitter_ms(f"job-{i}", NOW, 60_000) for i in range(50)}
    assert len(offsets) > 40 and len(schedules) > 40


def test_jitter_stays_in_range_and_below_the_cap() -> None:
    values = [jitter_ms("s", NOW + timedelta(minutes=m), 10_000) for m in range(2000)]
    assert all(0 <= v < 10_000 for v in values)
    assert min(values) < 1000 and max(values) > 9000  # spread over the whole range
    capped = [jitter_ms("s", NOW + timedelta(minutes=m), 10_000, 3000) for m in range(500)]
    assert all(0 <= v < 3000 for v in capped)


@pytest.mark.parametrize(
    ("jitter", "cap"),
    [
        pytest.param(0, None, id="no-jitter"),
        pytest.param(5000, 0, id="zero-cap"),
        pytest.param(-5, None, id="negative"),
    ],
)
def test_no_room_means_no_jitter(jitter: int, cap: int | None) -> None:
    assert jitter_ms("s", NOW, jitter, cap) == 0


def test_fixed_jitter_is_one_offset_per_schedule() -> None:
    fixed = {jitter_ms("s", NOW + timedelta(hours=h), 60_000, mode=JitterMode.FIXED) for h in range(20)}
    assert len(fixed) == 1


# -- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        pytest.param(RetryPolicy(max=0), [None], id="no-retries"),
        pytest.param(RetryPolicy(max=3, backoff=Backoff.FIXED, initial_ms=500), [500, 500, 500, None], id="fixed"),
        pytest.param(
            RetryPolicy(max=4, backoff=Backoff.EXPONENTIAL, initial_ms=1000, max_delay_ms=5000),
            [1000, 2000, 4000, 5000, None],
            id="exponential-capped",
        ),
        pytest.param(RetryPolicy(max=100, initial_ms=1000, max_delay_ms=60_000), [1000, 2000, 4000], id="huge-max"),
    ],
)
def test_next_retry_delay(policy: RetryPolicy, delays: list[int | None]) -> None:
    assert [next_retry_delay_ms(policy, attempt) for attempt in range(1, len(delays) + 1)] == delays


def test_retry_delays_never_overflow() -> None:
    assert next_retry_delay_ms(RetryPolicy(max=10_000, initial_ms=1, max_delay_ms=7), 9_999) == 7
    assert next_retry_delay_ms(RetryPolicy(max=3), 0) is None


@pytest.mark.parametrize(
    ("outcome", "on_timeout", "delay"),
    [
        pytest.param(RunState.FAILED, True, 1000, id="failed"),
        pytest.param(RunState.TIMED_OUT, True, 1000, id="timed-out"),
        pytest.param(RunState.TIMED_OUT, False, None, id="timed-out-not-retried"),
        pytest.param(RunState.CANCELLED, True, None, id="cancelled"),
        pytest.param(RunState.TERMINATED, True, None, id="terminated"),
        pytest.param(RunState.LOST, True, None, id="lost"),
        pytest.param(RunState.SUCCEEDED, True, None, id="succeeded"),
    ],
)
def test_should_retry(outcome: RunState, on_timeout: bool, delay: int | None) -> None:
    policy = RetryPolicy(max=2, initial_ms=1000, retry_on_timeout=on_timeout)
    assert should_retry(policy, outcome, attempt=1) == delay


def test_retry_policy_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        RetryPolicy(max=-1)
