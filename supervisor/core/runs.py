"""Runs: one execution (or one recorded non-execution) of a service, and its state machine.

A scheduled occurrence is identified by (service, nominal_time, attempt); every
retry is a new `Run` row with `attempt + 1`, so each attempt keeps its own exit
code and error (scheduling.md §5.1, §5.8). Pure: no I/O, no clock.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, TypeAlias

from supervise.supervisor.core.errors import InvalidTransition

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"


class RunState(StrEnum):
    """Where a run is in its life. Final states never change again."""

    PENDING = "pending"  # materialised ahead of its nominal time (backfill, a one-shot in the future)
    DUE = "due"  # its time has come; waiting for the overlap decision or a claim
    BUFFERED = "buffered"  # waiting for a running run to finish (buffer_one / buffer_all)
    QUEUED = "queued"  # admitted, waiting in the service's queue for a free slot (concurrency)
    STARTING = "starting"  # claimed; the worker is being spawned (a crash here leaves it `lost`)
    RUNNING = "running"  # the worker process is executing it
    SUCCEEDED = "succeeded"  # final: finished with success (exit 0 / no exception)
    FAILED = "failed"  # final for this attempt: non-zero exit, exception or spawn failure
    RETRY_WAIT = "retry_wait"  # a retry attempt waiting out its backoff delay
    TIMED_OUT = "timed_out"  # final for this attempt: exceeded its timeout and was stopped
    CANCELLED = "cancelled"  # final: stopped on request (cancel, cancel_other) or before it started
    TERMINATED = "terminated"  # final: killed without grace (terminate_other, cancel --force)
    LOST = "lost"  # final: its supervisor died or lost its lease; outcome unknown
    SKIPPED = "skipped"  # final: never ran; `reason` holds the SkipReason


class SkipReason(StrEnum):
    """Why an occurrence was recorded as skipped instead of run."""

    OVERLAP = "overlap"  # a previous run was still running (overlap = skip, or max_concurrent)
    MISSED = "missed"  # its time passed outside the catch-up window (or catchup = none)
    MISSED_DEADLINE = "missed_deadline"  # could not start within start_deadline of its time
    BUFFER_FULL = "buffer_full"  # the overlap buffer was full
    PAUSED = "paused"  # the schedule was paused at its time
    DST_GAP = "dst_gap"  # its wall-clock time did not exist (dst_gap = skip)
    MAX_RUNS = "max_runs"  # the schedule had used up max_runs
    CATCHUP_LIMIT = "catchup_limit"  # beyond max_catchup after downtime
    SUPERSEDED = "superseded"  # coalesced into a later (catchup = latest) or earlier run
    USER_SKIP = "user_skip"  # the user asked to skip the next occurrence


class RunOrigin(StrEnum):
    """What created a run."""

    SCHEDULE = "schedule"  # the trigger fired on time
    CATCHUP = "catchup"  # a time missed while the supervisor was down or paused
    BACKFILL = "backfill"  # materialised on request for a past time range
    MANUAL = "manual"  # run-now
    RETRY = "retry"  # another attempt of a failed or timed-out run
    RECOVERY = "recovery"  # a re-run of a run found `lost` after a crash (on_lost = retry)
    ONESHOT = "oneshot"  # added for one datetime by the `schedule` command


FINAL: Final = frozenset(
    {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.TIMED_OUT,
        RunState.CANCELLED,
        RunState.TERMINATED,
        RunState.LOST,
        RunState.SKIPPED,
    }
)
"""States a run never leaves."""

INITIAL: Final = frozenset({RunState.PENDING, RunState.DUE, RunState.STARTING, RunState.RETRY_WAIT, RunState.SKIPPED})
"""States a run may be created in (`new_run`)."""

_MS: Final = timedelta(milliseconds=1)

ACTIVE: Final = frozenset({RunState.STARTING, RunState.RUNNING})
"""States that hold an overlap slot and a worker: found `lost` after a crash."""

_STOPPED: Final = frozenset({RunState.CANCELLED, RunState.TERMINATED})
_ADMIT: Final = frozenset({RunState.QUEUED, RunState.STARTING, RunState.SKIPPED, RunState.CANCELLED})
ALLOWED: Final[Mapping[RunState, frozenset[RunState]]] = {
    RunState.PENDING: frozenset({RunState.DUE, RunState.BUFFERED} | _ADMIT),
    RunState.DUE: frozenset({RunState.BUFFERED} | _ADMIT),
    RunState.BUFFERED: _ADMIT,
    RunState.QUEUED: frozenset({RunState.STARTING, RunState.SKIPPED, RunState.CANCELLED}),
    RunState.RETRY_WAIT: _ADMIT,
    # back to `queued`: admitted but never handed to a worker (its worker was lost first)
    RunState.STARTING: frozenset(
        {RunState.RUNNING, RunState.FAILED, RunState.LOST, RunState.SKIPPED, RunState.QUEUED} | _STOPPED
    ),
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.LOST} | _STOPPED),
    **{state: frozenset() for state in FINAL},
}
"""The state machine of §5.8, as data: state -> states it may move to."""


def new_run_id() -> str:
    """A fresh run id: 32 lowercase hex digits (uuid4)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a service: its identity, where it is, and how it ended.

    Datetimes are aware. `nominal_time` is the trigger's time (None for manual
    runs); `jittered_time` is when it became due after jitter.
    """

    run_id: str
    service: str
    nominal_time: datetime | None
    origin: RunOrigin
    attempt: int
    state: RunState
    created_at: datetime
    reason: str | None = None
    args: Mapping[str, JSONValue] = field(default_factory=dict, hash=False)
    jittered_time: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    node: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    result: JSONValue = field(default=None, hash=False)
    key: str | None = None  # the idempotency key: the first attempt's run id, kept by retries and re-runs

    @property
    def idempotency_key(self) -> str:
        """What the run's calls carry for receivers to deduplicate on: the same for every attempt."""
        return self.key or self.run_id

    @property
    def is_final(self) -> bool:
        """True once the run can no longer change."""
        return self.state in FINAL

    @property
    def skip_reason(self) -> SkipReason | None:
        """The SkipReason of a skipped run: `reason` is "<skip reason>" or "<skip reason>: <detail>"."""
        if self.state is not RunState.SKIPPED or self.reason is None:
            return None
        try:
            return SkipReason(self.reason.split(":", 1)[0].strip())
        except ValueError:
            return None

    @property
    def duration_ms(self) -> int | None:
        """Milliseconds from start to finish, or None until both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at) // _MS

    def label(self) -> str:
        """A short name for messages: `web@2026-01-01T02:00:00+00:00#2 (3f2a9c1b)`."""
        when = self.nominal_time.astimezone(UTC).isoformat() if self.nominal_time else "manual"
        return f"{self.service}@{when}#{self.attempt} ({self.run_id[:8]})"


def new_run(
    service: str,
    *,
    at: datetime,
    nominal_time: datetime | None,
    origin: RunOrigin,
    state: RunState = RunState.DUE,
    attempt: int = 1,
    args: Mapping[str, JSONValue] | None = None,
    jittered_time: datetime | None = None,
    reason: str | None = None,
    run_id: str | None = None,
) -> Run:
    """Create a run record in one of the `INITIAL` states.

    Args:
        at: now; becomes `created_at`.
        state: `skipped` needs a `reason` (a SkipReason).
    Raises:
        InvalidTransition: for a state outside `INITIAL`, a skip without a reason, a
            naive datetime or an attempt below 1.
    """
    if state not in INITIAL:
        raise InvalidTransition(f"a run cannot be created as {state}; allowed: {_names(INITIAL)}")
    if state is RunState.SKIPPED and reason is None:
        raise InvalidTransition("a skipped run needs a reason (a SkipReason)")
    if attempt < 1:
        raise InvalidTransition(f"attempt numbers start at 1, got {attempt}")
    for name, value in (("at", at), ("nominal_time", nominal_time), ("jittered_time", jittered_time)):
        if value is not None and value.utcoffset() is None:
            raise InvalidTransition(f"{name} {value.isoformat()} is naive; runs need aware datetimes")
    return Run(
        run_id=run_id or new_run_id(),
        service=service,
        nominal_time=nominal_time,
        origin=origin,
        attempt=attempt,
        state=state,
        created_at=at,
        reason=reason,
        args=dict(args or {}),
        jittered_time=jittered_time,
        finished_at=at if state in FINAL else None,
    )


def new_retry(failed: Run, *, at: datetime, run_id: str | None = None) -> Run:
    """The next attempt of `failed` (same service, nominal time and args), in `retry_wait`.

    Raises:
        InvalidTransition: unless `failed` ended `failed` or `timed_out`.
    """
    if failed.state not in (RunState.FAILED, RunState.TIMED_OUT):
        raise InvalidTransition(f"run {failed.label()} is {failed.state}; only failed or timed_out runs are retried")
    run = new_run(
        failed.service,
        at=at,
        nominal_time=failed.nominal_time,
        origin=RunOrigin.RETRY,
        state=RunState.RETRY_WAIT,
        attempt=failed.attempt + 1,
        args=failed.args,
        jittered_time=failed.jittered_time,
        run_id=run_id,
    )
    return replace(run, reason=f"retry of {failed.run_id}", key=failed.idempotency_key)


def transition(
    run: Run,
    new_state: RunState,
    *,
    at: datetime,
    reason: str | None = None,
    node: str | None = None,
    pid: int | None = None,
    exit_code: int | None = None,
    signal: int | None = None,
    error: str | None = None,
    result: JSONValue = None,
) -> Run:
    """Move `run` to `new_state` at `at`, filling in what the move implies.

    Entering `running` stamps `started_at`; entering a final state stamps
    `finished_at`. Fields passed as None keep their current value.

    Raises:
        InvalidTransition: when ALLOWED forbids the move (a bug in the caller), or a
            move to `skipped` comes without a reason.
    """
    if new_state not in ALLOWED[run.state]:
        allowed = _names(ALLOWED[run.state]) or f"nothing, {run.state} is final"
        raise InvalidTransition(f"run {run.label()}: cannot go from {run.state} to {new_state}; allowed: {allowed}")
    if new_state is RunState.SKIPPED and reason is None:
        raise InvalidTransition(f"run {run.label()}: skipping needs a reason (a SkipReason)")
    if at.utcoffset() is None:
        raise InvalidTransition(f"run {run.label()}: transition time {at.isoformat()} is naive")
    # Every field copied in one attrgetter call and the changed ones set by position: a third
    # of `dataclasses.replace`'s cost (a busy service's run makes four or five transitions).
    values = list(_RUN_VALUES(run))
    values[_STATE] = new_state
    if reason is not None:
        values[_REASON] = reason
    if node is not None:
        values[_NODE] = node
    if pid is not None:
        values[_PID] = pid
    if exit_code is not None:
        values[_EXIT_CODE] = exit_code
    if signal is not None:
        values[_SIGNAL] = signal
    if error is not None:
        values[_ERROR] = error
    if result is not None:
        values[_RESULT] = result
    if new_state is RunState.RUNNING and run.started_at is None:
        values[_STARTED_AT] = at
    if new_state in FINAL:
        values[_FINISHED_AT] = at
    return Run(*values)


_RUN_FIELDS: Final = tuple(f.name for f in fields(Run))
_RUN_VALUES: Final = operator.attrgetter(*_RUN_FIELDS)
_STATE, _REASON, _NODE, _PID, _EXIT_CODE, _SIGNAL, _ERROR, _RESULT, _STARTED_AT, _FINISHED_AT = (
    _RUN_FIELDS.index(name)
    for name in (
        "state",
        "reason",
        "node",
        "pid",
        "exit_code",
        "signal",
        "error",
        "result",
        "started_at",
        "finished_at",
    )
)


def _names(states: frozenset[RunState]) -> str:
    return ", ".join(sorted(states))
