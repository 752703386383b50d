"""Scheduling policies: overlap, catch-up, start deadline, jitter and retries (§5.4-§5.7).

Each is a pure decision: facts in, a decision out, with a reason for every skip.
Pure: no I/O, no clock; `now` is an argument and jitter is a hash, not a dice roll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from supervise.supervisor.core.runs import RunState, SkipReason


class OverlapPolicy(StrEnum):
    """What an occurrence does when the service's runs already fill `max_concurrent`."""

    SKIP = "skip"  # record it skipped(overlap); default (K8s Forbid, systemd)
    BUFFER_ONE = "buffer_one"  # wait for a slot; at most one waits, later ones skipped(buffer_full)
    BUFFER_ALL = "buffer_all"  # wait for a slot, in order, up to buffer_limit
    CANCEL_OTHER = "cancel_other"  # stop the running run gracefully, then start (K8s Replace)
    TERMINATE_OTHER = "terminate_other"  # kill the running run, then start
    ALLOW_ALL = "allow_all"  # start regardless, up to max_concurrent (then skipped(overlap))


class OverlapAction(StrEnum):
    """What the shell does with a due occurrence."""

    START = "start"
    SKIP = "skip"
    BUFFER = "buffer"
    CANCEL_RUNNING_THEN_START = "cancel_running_then_start"
    TERMINATE_RUNNING_THEN_START = "terminate_running_then_start"


@dataclass(frozen=True, slots=True)
class OverlapDecision:
    """The answer of `decide_overlap`.

    `stop_count` says how many of the oldest running runs to stop first (cancel or
    terminate actions); `reason` is set only for SKIP.
    """

    action: OverlapAction
    reason: SkipReason | None = None
    stop_count: int = 0
    detail: str = ""


def decide_overlap(
    policy: OverlapPolicy,
    *,
    running: int,
    buffered: int,
    max_concurrent: int | None,
    buffer_limit: int,
) -> OverlapDecision:
    """Decide what a newly due occurrence does, given the service's other runs.

    Args:
        running: runs of the service in `starting` or `running`.
        buffered: occurrences already waiting in the buffer (they keep their order:
            with a non-empty buffer a new occurrence queues behind them).
        max_concurrent: slots for concurrent runs (None = unlimited, for allow_all).
        buffer_limit: the most occurrences buffer_all may hold.
    """
    slots = max_concurrent if max_concurrent is not None else running + 1
    queue_first = policy in (OverlapPolicy.BUFFER_ONE, OverlapPolicy.BUFFER_ALL) and buffered > 0
    if running < slots and not queue_first:
        return OverlapDecision(OverlapAction.START)
    full = f"{running} running, max_concurrent = {slots}"
    if policy is OverlapPolicy.BUFFER_ONE or policy is OverlapPolicy.BUFFER_ALL:
        limit = 1 if policy is OverlapPolicy.BUFFER_ONE else buffer_limit
        if buffered < limit:
            return OverlapDecision(OverlapAction.BUFFER, detail=f"{full}; {buffered + 1} buffered")
        return OverlapDecision(
            OverlapAction.SKIP, SkipReason.BUFFER_FULL, detail=f"{full}; buffer holds {buffered} (limit {limit})"
        )
    if policy is OverlapPolicy.CANCEL_OTHER or policy is OverlapPolicy.TERMINATE_OTHER:
        action = (
            OverlapAction.CANCEL_RUNNING_THEN_START
            if policy is OverlapPolicy.CANCEL_OTHER
            else OverlapAction.TERMINATE_RUNNING_THEN_START
        )
        return OverlapDecision(action, stop_count=running - slots + 1, detail=full)
    return OverlapDecision(OverlapAction.SKIP, SkipReason.OVERLAP, detail=full)


class CatchupPolicy(StrEnum):
    """Which missed occurrences run after downtime (within the catch-up window)."""

    LATEST = "latest"  # only the most recent one; the rest superseded (default; K8s, systemd)
    EARLIEST = "earliest"  # only the oldest one (APScheduler 4)
    ALL = "all"  # every one, up to max_catchup (Quartz IGNORE_MISFIRE)
    NONE = "none"  # none; wait for the next time (Quartz DO_NOTHING)


@dataclass(frozen=True, slots=True)
class CatchupDecision:
    """Missed nominal times split into those to run now and those recorded as skipped."""

    run: list[datetime]
    skipped: list[tuple[datetime, SkipReason]]


def decide_catchup(
    missed: Sequence[datetime],
    *,
    now: datetime,
    policy: CatchupPolicy,
    window_ms: int | None,
    max_catchup: int,
) -> CatchupDecision:
    """Decide which missed occurrences still run.

    Times older than `window_ms` before `now` are skipped(missed) whatever the policy
    (None = no window, for backfills). Of the rest, LATEST/EARLIEST keep one and
    mark the others superseded; ALL keeps the newest `max_catchup` and marks the
    older ones catchup_limit; NONE keeps nothing (missed).

    Returns:
        Both lists sorted oldest first.
    """
    times = sorted(set(missed))
    window = None if window_ms is None else timedelta(milliseconds=window_ms)
    stale = [t for t in times if window is not None and now - t > window]
    fresh = times[len(stale) :]
    skipped = [(t, SkipReason.MISSED) for t in stale]
    run: list[datetime] = []
    if policy is CatchupPolicy.NONE:
        skipped += [(t, SkipReason.MISSED) for t in fresh]
    elif fresh and max_catchup <= 0:
        skipped += [(t, SkipReason.CATCHUP_LIMIT) for t in fresh]
    elif policy is CatchupPolicy.ALL:
        cut = max(0, len(fresh) - max_catchup)
        skipped += [(t, SkipReason.CATCHUP_LIMIT) for t in fresh[:cut]]
        run = fresh[cut:]
    elif fresh:
        keep = fresh[-1] if policy is CatchupPolicy.LATEST else fresh[0]
        skipped += [(t, SkipReason.SUPERSEDED) for t in fresh if t != keep]
        run = [keep]
    return CatchupDecision(run=run, skipped=sorted(skipped))


class ResumePolicy(StrEnum):
    """What happens to the times a paused schedule missed when it resumes (§5.5)."""

    SKIP_MISSED = "skip_missed"  # record them skipped(paused); default (APScheduler 4 resume_from=now)
    CATCH_UP = "catch_up"  # treat them as missed: decide_catchup applies (K8s suspend)


def decide_resume(
    missed: Sequence[datetime],
    *,
    now: datetime,
    policy: ResumePolicy,
    catchup: CatchupPolicy,
    window_ms: int | None,
    max_catchup: int,
) -> CatchupDecision:
    """Decide what the times missed while paused become when the schedule resumes."""
    if policy is ResumePolicy.SKIP_MISSED:
        return CatchupDecision(run=[], skipped=[(t, SkipReason.PAUSED) for t in sorted(set(missed))])
    return decide_catchup(missed, now=now, policy=catchup, window_ms=window_ms, max_catchup=max_catchup)


def is_past_deadline(jittered_time: datetime, start_deadline_ms: int | None, now: datetime) -> bool:
    """True when an occurrence due at `jittered_time` can no longer start (skipped(missed_deadline)).

    The deadline is inclusive: starting exactly `start_deadline_ms` late is allowed.
    None means no deadline. Applies to buffered occurrences too.
    """
    if start_deadline_ms is None:
        return False
    return now > jittered_time + timedelta(milliseconds=start_deadline_ms)


class JitterMode(StrEnum):
    """How jitter offsets are drawn."""

    PER_RUN = "per_run"  # a different offset per nominal time (Temporal); default
    FIXED = "fixed"  # one stable offset per schedule (systemd FixedRandomDelay, croniter H)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def jitter_ms(
    schedule_id: str,
    nominal: datetime,
    jitter_ms: int,
    cap_ms: int | None = None,
    *,
    mode: JitterMode = JitterMode.PER_RUN,
) -> int:
    """A deterministic delay in [0, jitter_ms) for the occurrence at `nominal`.

    The same (schedule, nominal time) gives the same offset on every node and
    after every restart, so describe, catch-up and claims agree. It is a hash
    (BLAKE2b of the schedule id and the nominal instant), scaled to the range.

    Args:
        cap_ms: the time until the next nominal time: the offset stays below it, so
            a jittered run never passes its successor (APScheduler 4).
        mode: FIXED ignores `nominal` and gives one offset per schedule.
    """
    bound = jitter_ms if cap_ms is None else min(jitter_ms, cap_ms)
    if bound <= 0:
        return 0
    import hashlib  # here, not at the top: `hashlib` initialises OpenSSL, and few schedules have jitter

    when = "fixed" if mode is JitterMode.FIXED else str((nominal - _EPOCH) // timedelta(microseconds=1))
    digest = hashlib.blake2b(f"{schedule_id}\x00{when}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") * bound) >> 64


class Backoff(StrEnum):
    """How the delay between retry attempts grows."""

    FIXED = "fixed"  # initial_ms every time
    EXPONENTIAL = "exponential"  # initial_ms, then doubled, capped at max_delay_ms


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of a failed or timed-out run: `max` more attempts after the first.

    A retry is another attempt of the same occurrence (a new run with attempt + 1).
    """

    max: int = 0
    backoff: Backoff = Backoff.EXPONENTIAL
    initial_ms: int = 1000
    max_delay_ms: int = 300_000
    retry_on_timeout: bool = True

    def __post_init__(self) -> None:
        if self.max < 0 or self.initial_ms < 0 or self.max_delay_ms < 0:
            raise ValueError(f"retry settings must be >= 0: {self}")


RETRYABLE: Final = frozenset({RunState.FAILED, RunState.TIMED_OUT})
"""Outcomes that may be retried; cancelled, terminated and lost runs never are."""


def next_retry_delay_ms(policy: RetryPolicy, attempt: int) -> int | None:
    """The delay before the attempt after `attempt` (1 = the first run), or None: give up.

    With max = 3 attempts 1, 2 and 3 are followed by a retry, attempt 4 is the last.
    """
    if attempt < 1 or attempt > policy.max:
        return None
    if policy.backoff is Backoff.FIXED:
        return min(policy.initial_ms, policy.max_delay_ms)
    return min(policy.initial_ms << min(attempt - 1, 62), policy.max_delay_ms)


def should_retry(policy: RetryPolicy, outcome: RunState, attempt: int) -> int | None:
    """`next_retry_delay_ms` for an outcome that may be retried, else None."""
    if outcome not in RETRYABLE or (outcome is RunState.TIMED_OUT and not policy.retry_on_timeout):
        return None
    return next_retry_delay_ms(policy, attempt)


class LostPolicy(StrEnum):
    """What a run found `lost` after a crash leads to (§5.8 on_lost)."""

    ABANDON = "abandon"  # record it lost; at-most-once (default; APScheduler 4 abandoned)
    RERUN = "rerun"  # start it again with origin = recovery; at-least-once (Quartz requestsRecovery)
