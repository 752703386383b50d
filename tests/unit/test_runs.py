"""Runs: the state table, transitions, new runs and retries; and the purity of the scheduling core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from supervise.supervisor.core.errors import InvalidTransition
from supervise.supervisor.core.runs import (
    ACTIVE,
    ALLOWED,
    FINAL,
    INITIAL,
    Run,
    RunOrigin,
    RunState,
    SkipReason,
    new_retry,
    new_run,
    new_run_id,
    transition,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
S = RunState


def due_run(**kw: object) -> Run:
    return new_run("report", at=T0, nominal_time=T0, origin=RunOrigin.SCHEDULE, **kw)  # type: ignore[arg-type]


def run_in(state: RunState) -> Run:
    """A run in `state`, reached through legal transitions."""
    paths = {
        S.PENDING: [],
        S.DUE: [],
        S.BUFFERED: [S.BUFFERED],
        S.QUEUED: [S.QUEUED],
        S.STARTING: [S.STARTING],
        S.RUNNING: [S.STARTING, S.RUNNING],
        S.RETRY_WAIT: [],
        S.SKIPPED: [S.SKIPPED],
    }
    if state in (S.PENDING, S.RETRY_WAIT):
        return due_run(state=state)
    run = due_run()
    for step in paths.get(state, [S.STARTING, S.RUNNING, state]):
        run = transition(run, step, at=T0, reason="x" if step is S.SKIPPED else None)
    return run


# -- the table ------------------------------------------------------------------------------------


def test_every_state_has_a_row_and_final_states_have_no_exits() -> None:
    assert set(ALLOWED) == set(RunState)
    assert all(ALLOWED[s] == frozenset() for s in FINAL)
    assert all(ALLOWED[s] for s in set(RunState) - FINAL)


def test_every_state_is_reachable_from_a_state_a_run_is_created_in() -> None:
    seen, frontier = set(INITIAL), list(INITIAL)
    while frontier:
        for nxt in ALLOWED[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(RunState)


def test_every_non_final_state_can_end() -> None:
    for state in set(RunState) - FINAL:
        assert ALLOWED[state] & FINAL, state


def test_active_states_are_the_ones_recovery_marks_lost() -> None:
    assert ACTIVE == {S.STARTING, S.RUNNING}
    assert all(S.LOST in ALLOWED[s] for s in ACTIVE)


@pytest.mark.parametrize(
    ("source", "target"),
    [pytest.param(a, b, id=f"{a}->{b}") for a in RunState for b in RunState],
)
def test_transition_obeys_the_table(source: RunState, target: RunState) -> None:
    run = run_in(source)
    assert run.state is source
    if target in ALLOWED[source]:
        moved = transition(run, target, at=T0 + timedelta(seconds=1), reason="why")
        assert moved.state is target
    else:
        with pytest.raises(InvalidTransition, match=f"cannot go from {source} to {target}"):
            transition(run, target, at=T0, reason="why")


# -- transitions fill in what they imply ----------------------------------------------------------


def test_a_run_through_its_life_stamps_start_finish_and_outcome() -> None:
    run = due_run(args={"full": True})
    run = transition(run, S.STARTING, at=T0 + timedelta(seconds=1), node="host-a")
    run = transition(run, S.RUNNING, at=T0 + timedelta(seconds=2), pid=4242)
    assert run.started_at == T0 + timedelta(seconds=2) and run.finished_at is None and run.duration_ms is None
    run = transition(run, S.SUCCEEDED, at=T0 + timedelta(seconds=5, milliseconds=250), exit_code=0, result={"n": 3})
    assert (run.node, run.pid, run.exit_code, run.result) == ("host-a", 4242, 0, {"n": 3})
    assert run.duration_ms == 3250
    assert run.is_final and run.args == {"full": True}


def test_a_failed_run_keeps_its_error_and_signal() -> None:
    run = transition(run_in(S.RUNNING), S.FAILED, at=T0, exit_code=-9, signal=9, error="Traceback ...")
    assert (run.signal, run.error, run.finished_at) == (9, "Traceback ...", T0)


def test_skipping_needs_a_reason_and_exposes_it_as_a_skip_reason() -> None:
    with pytest.raises(InvalidTransition, match="needs a reason"):
        transition(due_run(), S.SKIPPED, at=T0)
    skipped = transition(due_run(), S.SKIPPED, at=T0, reason=SkipReason.BUFFER_FULL)
    assert skipped.skip_reason is SkipReason.BUFFER_FULL
    assert skipped.finished_at == T0 and skipped.started_at is None
    assert due_run().skip_reason is None
    detailed = transition(due_run(), S.SKIPPED, at=T0, reason="overlap: 1 running, max_concurrent = 1")
    assert detailed.skip_reason is SkipReason.OVERLAP
    assert transition(due_run(), S.SKIPPED, at=T0, reason="free text").skip_reason is None


def test_transition_refuses_naive_times() -> None:
    with pytest.raises(InvalidTransition, match="naive"):
        transition(due_run(), S.STARTING, at=datetime(2026, 1, 1))


def test_an_illegal_move_names_the_run_and_the_allowed_states() -> None:
    run = run_in(S.SUCCEEDED)
    with pytest.raises(InvalidTransition) as caught:
        transition(run, S.RUNNING, at=T0)
    message = str(caught.value)
    assert run.run_id[:8] in message and "report@2026-01-01T12:00:00+00:00#1" in message
    assert "allowed: nothing, succeeded is final" in message


# -- new runs and retries -------------------------------------------------------------------------


def test_new_run_defaults() -> None:
    run = due_run()
    assert (run.state, run.attempt, run.created_at, run.args) == (S.DUE, 1, T0, {})
    assert len(run.run_id) == 32 and run.run_id != new_run_id()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"state": S.RUNNING}, "cannot be created as running", id="not-initial"),
        pytest.param({"state": S.SKIPPED}, "needs a reason", id="skip-without-reason"),
        pytest.param({"attempt": 0}, "start at 1", id="attempt-zero"),
        pytest.param({"jittered_time": datetime(2026, 1, 1)}, "is naive", id="naive"),
    ],
)
def test_new_run_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidTransition, match=message):
        due_run(**kwargs)


def test_a_run_created_skipped_is_already_finished() -> None:
    run = due_run(state=S.SKIPPED, reason=SkipReason.MISSED)
    assert run.is_final and run.finished_at == T0


def test_new_retry_is_the_next_attempt_of_the_same_occurrence() -> None:
    failed = transition(run_in(S.RUNNING), S.FAILED, at=T0, exit_code=1)
    retry = new_retry(failed, at=T0 + timedelta(seconds=5))
    assert (retry.service, retry.nominal_time, retry.args) == (failed.service, failed.nominal_time, failed.args)
    assert (retry.attempt, retry.origin, retry.state) == (2, RunOrigin.RETRY, S.RETRY_WAIT)
    assert retry.reason == f"retry of {failed.run_id}" and retry.run_id != failed.run_id
    started = transition(retry, S.STARTING, at=T0 + timedelta(seconds=6))
    assert started.state is S.STARTING


@pytest.mark.parametrize("state", [S.SUCCEEDED, S.CANCELLED, S.LOST, S.RUNNING])
def test_only_failed_or_timed_out_runs_are_retried(state: RunState) -> None:
    with pytest.raises(InvalidTransition, match="only failed or timed_out"):
        new_retry(run_in(state), at=T0)


def test_manual_runs_have_no_nominal_time() -> None:
    run = new_run("report", at=T0, nominal_time=None, origin=RunOrigin.MANUAL, state=S.STARTING)
    assert run.label().startswith("report@manual#1")


def test_runs_are_hashable_despite_their_args() -> None:
    assert len({due_run(args={"a": 1}), due_run(args={"a": 2})}) == 2
