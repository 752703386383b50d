"""The run-history store: the interface every backend implements, and its records.

One `Store` protocol, two implementations (SQLite by default, PostgreSQL for
several hosts), one contract test suite (tests/contract/test_store.py). Calls
are synchronous and short; the shell runs them in a thread or inline.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol, Self

from supervise.protocol.errors import SuperviseError
from supervise.supervisor.core.runs import FINAL, JSONValue, Run, RunOrigin, RunState
from supervise.supervisor.store.episodes import EpisodeStore
from supervise.supervisor.store.journal_marks import JournalMarks


class StoreError(SuperviseError):
    """The store could not do what was asked: locked, unreachable, full or corrupt.

    The message names the database and says what to do; `cause` is the driver's error.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        self.cause = cause
        super().__init__(message)


class NodeNameTaken(StoreError):
    """Cluster mode: another live node already uses this node name (the daemon exits 78, EX_CONFIG)."""


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the scheduler remembers per service across restarts."""

    paused: bool = False
    last_fired: datetime | None = None  # the last nominal time handled (run or skipped)
    runs_so_far: int = 0  # scheduled runs that started, for max_runs
    skip_next: bool = False  # the user asked to skip the next occurrence
    note: str | None = None  # why it is paused, by whom


@dataclass(frozen=True, slots=True)
class OneShot:
    """An occurrence added at runtime for one datetime (`supervise run web --at ...`)."""

    id: str
    service: str
    at: datetime
    args: Mapping[str, JSONValue] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class CorruptionRecovery:
    """A database found corrupt at open, moved aside and replaced by an empty one (F-23)."""

    path: str
    moved_to: str
    problem: str

    @property
    def message(self) -> str:
        return (
            f"history database {self.path} is corrupt ({self.problem}); moved it to {self.moved_to} "
            "and started an empty one. Inspect or delete the old file; services keep running"
        )


CLAIMABLE: Final = frozenset({RunState.DUE, RunState.BUFFERED})
"""States `claim_due` takes a run from (to `starting`; ALLOWED permits both moves)."""

UNFINISHED: Final = frozenset(RunState) - FINAL
"""States `prune` never deletes."""

RUN_COLUMNS: Final = (
    "run_id",
    "service",
    "nominal_time",
    "origin",
    "attempt",
    "state",
    "created_at",
    "reason",
    "args",
    "jittered_time",
    "started_at",
    "finished_at",
    "node",
    "pid",
    "exit_code",
    "signal",
    "error",
    "result",
    "key",
)
"""Run fields in table-column order; the tables add `seq` (insertion order) and `family`."""
_TIMES: Final = ("nominal_time", "created_at", "jittered_time", "started_at", "finished_at")


def occurrence_family(origin: RunOrigin) -> str:
    """The uniqueness family of an origin: scheduled, catch-up, retry and recovery share one.

    So a time fired late (catchup) on one node and on time (schedule) on another
    is still inserted once; backfill and manual runs are separate families.
    """
    if origin in (RunOrigin.BACKFILL, RunOrigin.MANUAL):
        return origin.value
    return "schedule"


def run_family(run: Run) -> str:
    """The uniqueness family of a run: `occurrence_family`, except that a one-shot, and a
    retry or re-run that carries an idempotency key, are a family of their own (two
    one-shots of one service at the same time are two occurrences)."""
    if run.origin is RunOrigin.ONESHOT or (run.key is not None and run.origin in (RunOrigin.RETRY, RunOrigin.RECOVERY)):
        return f"key:{run.idempotency_key}"
    return occurrence_family(run.origin)


# -- notifications outbox ---------------------------------------------------------------------------


class NotificationState(StrEnum):
    """Where an outbox row is: waiting for (another) attempt, delivered, or given up on."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # max_attempts used up, or it cannot be sent (its channel is gone)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One message for one channel, in the outbox until it is delivered or given up on.

    `id` is the deduplication key, `(run or service, event, incarnation)` plus the
    channel: adding a notification whose id exists changes nothing, so the same
    fact never produces two.
    """

    id: str
    channel: str
    service: str
    event: str
    payload: Mapping[str, JSONValue] = field(default_factory=dict, hash=False)  # the template variables
    state: NotificationState = NotificationState.PENDING
    attempts: int = 0
    created_at: datetime
    next_attempt_at: datetime
    last_error: str | None = None
    delivered_at: datetime | None = None


class NotificationStore(Protocol):
    """The outbox methods of a `Store` (kept apart from the run methods)."""

    def add_notification(self, notification: Notification) -> bool:
        """Insert a pending notification; False (and nothing changes) when its id exists."""
        ...

    def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        """Pending notifications whose next attempt is at or before `now`, oldest first."""
        ...

    def claim_notifications(self, now: datetime, until: datetime, limit: int = 100) -> list[Notification]:
        """Take the due notifications (as `due_notifications`) for one delivery attempt.

        Each row returned has its next attempt moved to `until`, in the same
        transaction (rows locked by another claimer are skipped), so no other
        supervisor sharing the store takes it before `until`: a lease that
        `record_attempt` ends, and that expires if its holder dies.
        """
        ...

    def next_notification_at(self) -> datetime | None:
        """When the soonest pending notification is due, or None when none is pending."""
        ...

    def record_attempt(
        self, notification_id: str, *, at: datetime, error: str | None, retry_at: datetime | None
    ) -> bool:
        """Count one delivery attempt: delivered when `error` is None, else pending again
        until `retry_at`, or failed when `retry_at` is None. False for an unknown or no
        longer pending id (nothing changes)."""
        ...

    def list_notifications(self, *, failed_only: bool = False, limit: int = 100) -> list[Notification]:
        """Notifications newest first; with `failed_only`, those given up on."""
        ...

    def prune_notifications(self, before: datetime) -> int:
        """Delete delivered and failed notifications created before `before`; returns how many."""
        ...


NOTIFICATION_COLUMNS: Final = (
    "id",
    "channel",
    "service",
    "event",
    "payload",
    "state",
    "attempts",
    "created_at",
    "next_attempt_at",
    "last_error",
    "delivered_at",
)


def attempt_outcome(
    *, at: datetime, error: str | None, retry_at: datetime | None
) -> tuple[NotificationState, datetime, datetime | None]:
    """A delivery attempt's result as (state, next_attempt_at, delivered_at): delivered when
    there was no error, pending again at `retry_at`, or failed for good without one."""
    if error is None:
        return NotificationState.DELIVERED, at, at
    return (NotificationState.PENDING if retry_at is not None else NotificationState.FAILED), retry_at or at, None


def notification_row(n: Notification, encode_time: Callable[[datetime], Any]) -> tuple[Any, ...]:
    """A notification's values in `NOTIFICATION_COLUMNS` order, times through the backend's `encode_time`."""
    return (
        n.id,
        n.channel,
        n.service,
        n.event,
        to_json(dict(n.payload)),
        n.state.value,
        n.attempts,
        encode_time(n.created_at),
        encode_time(n.next_attempt_at),
        n.last_error,
        encode_time(n.delivered_at) if n.delivered_at else None,
    )


def row_to_notification(row: Mapping[str, Any], decode_time: Callable[[Any], datetime]) -> Notification:
    """Rebuild a notification from a row mapping that has the `NOTIFICATION_COLUMNS`."""
    payload = row["payload"]
    delivered = row["delivered_at"]
    return Notification(
        id=row["id"],
        channel=row["channel"],
        service=row["service"],
        event=row["event"],
        payload=json.loads(payload) if isinstance(payload, str) else payload,
        state=NotificationState(row["state"]),
        attempts=row["attempts"],
        created_at=decode_time(row["created_at"]),
        next_attempt_at=decode_time(row["next_attempt_at"]),
        last_error=row["last_error"],
        delivered_at=None if delivered is None else decode_time(delivered),
    )


class Store(NotificationStore, EpisodeStore, JournalMarks, Protocol):
    """Persistence for runs, schedule state, one-shots and runtime registrations.

    Every method is one short transaction. Datetimes go in aware and come back
    aware in UTC. Methods raise `StoreError` when the database fails.
    """

    def open(self) -> Self:
        """Connect, create or migrate the schema; returns self. Idempotent."""
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def insert_run(self, run: Run) -> bool:
        """Insert `run`; False when its occurrence (or run id) already exists.

        Scheduled occurrences are unique on (service, nominal_time, family of
        origin, attempt): whichever node or restart inserts first wins (F-18).
        """
        ...

    def insert_runs(self, runs: list[Run]) -> int:
        """Insert many runs in one transaction (backfill); returns how many were new."""
        ...

    def update_run(self, run: Run, *, expected_state: RunState | None = None) -> bool:
        """Write `run`'s fields over the stored row with the same run id.

        Args:
            expected_state: compare-and-set; update only while the stored state is this.
        Returns:
            False when no run has that id, or `expected_state` did not match
            (so `update_run(run) or insert_run(run)` is an upsert).
        """
        ...

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None."""
        ...

    def list_runs(
        self,
        service: str | None = None,
        *,
        states: set[RunState] | frozenset[RunState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Run]:
        """Runs newest first (by creation), optionally of one service, in some states,
        created strictly before `before` (for paging)."""
        ...

    def runs_in_states(self, states: set[RunState] | frozenset[RunState]) -> list[Run]:
        """Every run in one of `states`, oldest first: recovery finds `starting`/`running`
        rows left by a crash and marks them lost."""
        ...

    def pending_runs(self, after: tuple[datetime, str] | None, limit: int) -> list[Run]:
        """Runs in `pending` (one-shots waiting for their time), of every service, in
        (nominal_time, run_id) order, strictly after `after`: the scheduler's window reads
        the next ones as it drains."""
        ...

    def queued_runs(self, service: str, limit: int) -> list[Run]:
        """The service's runs in `queued`, in (nominal_time, insertion) order: loaded into the
        scheduler's queue at start and as its window drains."""
        ...

    def count_runs(self, service: str, states: set[RunState] | frozenset[RunState]) -> int:
        """How many runs of `service` are in one of `states`."""
        ...

    def claim_due(self, service: str, nominal_time: datetime, node: str) -> Run | None:
        """Claim the due (or buffered) run of this occurrence for `node`.

        Exactly one caller across processes and hosts gets the run back, moved to
        `starting` with `node` set; everyone else gets None. Asking again from the
        winning node returns its run again (a retried call after a lost reply).
        """
        ...

    def get_schedule_state(self, service: str) -> ScheduleState:
        """The service's schedule state; defaults when none was stored."""
        ...

    def put_schedule_state(self, service: str, state: ScheduleState) -> None:
        """Store the service's schedule state (replacing the previous one)."""
        ...

    def add_oneshot(self, service: str, at: datetime, args: Mapping[str, JSONValue] | None = None) -> str:
        """Record a one-shot occurrence; returns its id."""
        ...

    def list_oneshots(self, service: str | None = None) -> list[OneShot]:
        """One-shots, soonest first, optionally of one service."""
        ...

    def remove_oneshot(self, oneshot_id: str) -> bool:
        """Delete a one-shot; False when there was none with that id."""
        ...

    def put_registration(self, name: str, spec: Mapping[str, Any]) -> None:
        """Store (or replace) a service added at runtime; `spec` must be JSON-able."""
        ...

    def delete_registration(self, name: str) -> bool:
        """Forget a runtime service; False when there was none."""
        ...

    def list_registrations(self) -> dict[str, dict[str, Any]]:
        """Every runtime service, by name."""
        ...

    def forget_service(self, service: str) -> int:
        """Delete everything kept about `service`: its runs (any state), one-shots, schedule
        state, registration and notifications; returns how many runs were deleted. For a
        service that is no longer registered anywhere (a deleted tenant's)."""
        ...

    def prune(self, keep_per_outcome: int, max_age: timedelta, now: datetime) -> int:
        """Delete finished runs beyond the newest `keep_per_outcome` per (service, final
        state), and finished runs created before `now - max_age`. Unfinished runs are
        never deleted. Returns how many were deleted."""
        ...


# -- helpers shared by the implementations --------------------------------------------------------


def to_json(value: object) -> str:
    """Compact JSON text for args, results and specs."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"value is not JSON-serialisable ({exc}); pass dicts, lists, str, int, float, bool, None"
        ) from exc


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise StoreError(f"naive datetime {value.isoformat()} given to the store; pass an aware datetime")
    return value.astimezone(UTC)


RUN_FIXED: Final = frozenset(
    {"run_id", "service", "nominal_time", "origin", "attempt", "created_at", "args", "jittered_time", "key"}
)
"""Run columns set when the run is inserted and never changed (with `family`): a retry or a
re-run is a new run, with its own row and attempt number."""
RUN_UPDATABLE: Final = tuple(name for name in RUN_COLUMNS if name not in RUN_FIXED)
"""The columns `update_run` writes: what a run's transitions change. Leaving the fixed ones
out of the UPDATE spares the indexes built on them a rewrite, and the arguments a JSON
encoding, on every state change (SQLite rewrites every index on a column the statement sets,
changed or not: `attempt` in it cost the unique occurrence index a delete and an insert, a
third of each UPDATE)."""


def _column_value(run: Run, name: str, encode_time: Callable[[datetime], object]) -> object:
    value = getattr(run, name)
    if name in _TIMES and value is not None:
        return encode_time(utc(value))
    if name == "args":
        return to_json(dict(value))
    if name == "result":
        return None if value is None else to_json(value)
    return value


def run_to_row(run: Run, encode_time: Callable[[datetime], object]) -> dict[str, object]:
    """A run as column values (plus `family`), with datetimes passed through `encode_time`."""
    row = {name: _column_value(run, name, encode_time) for name in RUN_COLUMNS}
    row["family"] = run_family(run)
    return row


def run_update_values(run: Run, encode_time: Callable[[datetime], object]) -> list[object]:
    """The values of `RUN_UPDATABLE`, in that order, for an UPDATE of the run's row."""
    values: list[object] = list(_UPDATABLE_VALUES(run))
    for i in _UPDATABLE_TIMES:
        if values[i] is not None:
            values[i] = encode_time(utc(values[i]))  # type: ignore[arg-type]
    if values[_UPDATABLE_RESULT] is not None:
        values[_UPDATABLE_RESULT] = to_json(values[_UPDATABLE_RESULT])
    return values


# A state change writes these for every run of a burst: the columns' kinds are worked out once.
_UPDATABLE_VALUES: Final = operator.attrgetter(*RUN_UPDATABLE)
_UPDATABLE_TIMES: Final = tuple(i for i, name in enumerate(RUN_UPDATABLE) if name in _TIMES)
_UPDATABLE_RESULT: Final = RUN_UPDATABLE.index("result")
assert "args" not in RUN_UPDATABLE  # run_update_values encodes `result` alone as JSON

_PLAIN, _TIME, _JSON = 0, 1, 2
_COLUMN_KINDS: Final = tuple(
    (name, _TIME if name in _TIMES else _JSON if name in ("args", "result") else _PLAIN) for name in RUN_COLUMNS
)


def row_to_run(row: Mapping[str, Any], decode_time: Callable[[Any], datetime]) -> Run:
    """Rebuild a run from a row mapping that has the `RUN_COLUMNS`."""
    values: dict[str, Any] = {}
    for name, kind in _COLUMN_KINDS:
        value = row[name]
        if value is not None and kind:
            if kind == _TIME:
                value = decode_time(value)
            elif value == "{}":  # most runs' arguments: no decoder needed for an empty map
                value = {}
            elif isinstance(value, str):
                value = json.loads(value)
        values[name] = value
    values["origin"] = RunOrigin(values["origin"])
    values["state"] = RunState(values["state"])
    values["args"] = values["args"] or {}
    return Run(**values)
