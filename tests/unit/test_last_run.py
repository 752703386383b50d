"""Which run `status` shows as a schedule's last: the later-created, as the store orders them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run
from supervise.supervisor.daemon.run_views import newer

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def _final(at: datetime, state: RunState = RunState.SUCCEEDED) -> Run:
    return replace(new_run("report", at=at, nominal_time=at, origin=RunOrigin.SCHEDULE), state=state)


def test_nothing_kept_yet_takes_what_the_store_has() -> None:
    stored = _final(T0)
    assert newer(None, stored) is stored


def test_the_later_created_run_wins_whichever_side_it_is_on() -> None:
    early, late = _final(T0), _final(T0 + timedelta(seconds=1))
    assert newer(early, late) is late
    assert newer(late, early) is late


def test_the_same_run_from_the_store_does_not_replace_the_copy_kept_here() -> None:
    kept = _final(T0, RunState.FAILED)
    assert newer(kept, replace(kept, error="older copy")) is kept
