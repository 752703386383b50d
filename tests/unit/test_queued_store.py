"""The store's writer thread: order kept, and a run's superseded updates left out of a batch."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from supervise.supervisor.core.runs import RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.base import Notification, ScheduleState
from supervise.supervisor.store.queued import BATCH, QueuedStore
from supervise.supervisor.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _count_updates(path: Path) -> None:
    """A trigger in the database itself counts the UPDATE statements that reach `runs`."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE updates (run_id TEXT, state TEXT);
        CREATE TRIGGER count_updates AFTER UPDATE ON runs
        BEGIN INSERT INTO updates VALUES (new.run_id, new.state); END;
        """
    )
    db.close()


def test_updates_of_one_run_in_one_batch_reach_the_database_once_with_the_last_state(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    SqliteStore(path).open().close()
    _count_updates(path)
    sqlite = SqliteStore(path).open()
    queued = QueuedStore(sqlite, shared=False)
    called: list[str] = []
    try:
        first = new_run("a", at=T0, nominal_time=T0, origin=RunOrigin.ONESHOT)
        run = new_run("a", at=T0, nominal_time=T0 + timedelta(seconds=1), origin=RunOrigin.ONESHOT)
        with sqlite._lock:  # the writer blocks on its first write; the rest queue behind it
            queued.insert_run(first)
            queued.insert_run(run)
            running = transition(transition(run, RunState.STARTING, at=T0), RunState.RUNNING, at=T0)
            queued.update_run(transition(run, RunState.STARTING, at=T0), then=lambda: called.append("starting"))
            queued.update_run(running, then=lambda: called.append("running"))
            queued.update_run(transition(running, RunState.SUCCEEDED, at=T0 + timedelta(seconds=2)))
        assert queued.wait_written(10)
        stored = sqlite.get_run(run.run_id)
        assert stored is not None and stored.state is RunState.SUCCEEDED
        assert stored.started_at == T0 and stored.finished_at == T0 + timedelta(seconds=2)
        assert called == ["starting", "running"]  # each write's callback still runs, in order
    finally:
        queued.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT run_id, state FROM updates").fetchall() == [(run.run_id, "succeeded")]
    db.close()


def test_update_leaves_the_columns_fixed_at_insert_alone(tmp_path: Path) -> None:
    """`update_run` writes the state and what came with it; service, nominal time, origin,
    created_at and key stay as inserted (and their indexes are not rewritten)."""
    store = SqliteStore(tmp_path / "history.db").open()
    try:
        run = new_run("a", at=T0, nominal_time=T0, origin=RunOrigin.ONESHOT, args={"n": 1})
        store.insert_run(run)
        done = transition(transition(run, RunState.STARTING, at=T0), RunState.RUNNING, at=T0, pid=42)
        assert store.update_run(done)
        stored = store.get_run(run.run_id)
        assert stored == done
    finally:
        store.close()


def test_writes_queued_together_are_committed_in_one_transaction_even_across_a_full_batch(tmp_path: Path) -> None:
    """A run's final state and the outbox row it causes: never one without the other on disk."""
    sqlite = SqliteStore(tmp_path / "history.db").open()
    statements: list[str] = []
    sqlite._db().set_trace_callback(statements.append)  # the writer's connection, as SQLite runs it
    queued = QueuedStore(sqlite, shared=False)
    try:
        fillers = [new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL) for _ in range(BATCH - 1)]
        run = new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL)
        sqlite.insert_run(run)
        row = Notification(
            id=f"run:{run.run_id}|failure|ops",
            channel="ops",
            service="a",
            event="failure",
            created_at=T0,
            next_attempt_at=T0,
        )
        with queued._wake:  # the writer looks at the queue only once all is in: the batch ends inside the group
            for filler in fillers:
                queued.insert_run(filler)
            statements.clear()
            with queued.together():
                failed = transition(transition(run, RunState.STARTING, at=T0), RunState.FAILED, at=T0)
                queued.update_run(failed)
                queued.add_notifications(lambda: sqlite.add_notification(row))
        assert queued.wait_written(10)
    finally:
        queued.close()
    transactions: list[list[str]] = []
    for statement in statements:
        if statement.startswith("BEGIN"):
            transactions.append([])
        elif transactions and statement.startswith(("UPDATE runs", "INSERT INTO notifications")):
            transactions[-1].append(" ".join(statement.split()[:3]))
    holding = [t for t in transactions if any(s.startswith("UPDATE runs") for s in t)]
    assert len(holding) == 1 and any(s.startswith("INSERT INTO notifications") for s in holding[0])


def test_unsettled_counts_only_the_barrier_writes_still_queued(tmp_path: Path) -> None:
    sqlite = SqliteStore(tmp_path / "history.db").open()
    queued = QueuedStore(sqlite, shared=False)
    try:
        with sqlite._lock:  # the writer stalls
            queued.insert_run(new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL))
            pending = new_run("a", at=T0, nominal_time=T0, origin=RunOrigin.ONESHOT, state=RunState.PENDING)
            queued.insert_run(pending, barrier=True)
            assert queued.pending == 2 and queued.unsettled == 1
        assert queued.wait_written(10)
        assert queued.pending == 0 and queued.unsettled == 0
    finally:
        queued.close()


def test_a_prune_at_the_head_of_the_queue_is_written_outside_any_batch(tmp_path: Path) -> None:
    """A prune commits its own deletes, and SQLite's vacuum after them ends any open transaction:
    inside a batch, the batch's commit would fail and its writes be tried again one by one."""
    sqlite = SqliteStore(tmp_path / "history.db").open()
    old = [
        transition(new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL), RunState.SKIPPED, at=T0, reason="x")
        for _ in range(20)
    ]
    sqlite.insert_runs(old)
    statements: list[str] = []
    sqlite._db().set_trace_callback(statements.append)  # the writer's connection, as SQLite runs it
    queued = QueuedStore(sqlite, shared=False)
    later = new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL)
    try:
        with queued._wake:  # the writer looks at the queue once all three are in
            queued.prune(keep_per_outcome=5, max_age=timedelta(days=365), now=T0)
            queued.insert_run(later)
            queued.add_notifications(lambda: None)
        assert queued.wait_written(10)
        assert len(sqlite.list_runs("a", states={RunState.SKIPPED})) == 5
        assert sqlite.get_run(later.run_id) is not None
    finally:
        queued.close()
    opened = False
    for text in statements:  # every COMMIT ends a BEGIN: none is left to fail on a closed transaction
        if text.startswith(("BEGIN", "COMMIT")):
            assert opened == text.startswith("COMMIT"), f"{text} with a transaction {'open' if opened else 'closed'}"
            opened = not opened
    assert len([t for t in statements if t.startswith("INSERT INTO runs")]) == 1, "written once, not retried"


def test_on_a_shared_store_run_updates_are_merged_and_a_larger_group_is_one_transaction(tmp_path: Path) -> None:
    """Supervisors sharing a store merge only their runs' state changes (locked in run id order,
    as the cluster's lease renewals lock them); any other write, and a group of several (a final
    state and its notification rows), is a transaction of its own."""
    sqlite = SqliteStore(tmp_path / "history.db").open()
    statements: list[str] = []
    sqlite._db().set_trace_callback(statements.append)
    queued = QueuedStore(sqlite, shared=True)
    runs = [new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL) for _ in range(3)]
    for run in runs:
        sqlite.insert_run(run)
    statements.clear()
    try:
        with queued._wake:  # the writer looks at the queue once all is in
            for run in runs[:2]:
                queued.update_run(transition(run, RunState.STARTING, at=T0))
            queued.put_schedule_state("a", ScheduleState(paused=False, last_fired=T0, runs_so_far=1))
            for run in runs[:2]:
                with queued.together():  # a group of one write: merged
                    queued.update_run(transition(transition(run, RunState.STARTING, at=T0), RunState.RUNNING, at=T0))
            with queued.together():
                queued.update_run(transition(runs[2], RunState.STARTING, at=T0))
                queued.add_notifications(lambda: sqlite.put_registration("marker", {}))
        assert queued.wait_written(10)
    finally:
        queued.close()
    transactions: list[list[str]] = []
    for text in statements:
        if text.startswith("BEGIN"):
            transactions.append([])
        elif transactions and text.startswith(("UPDATE runs", "INSERT OR REPLACE INTO registrations")):
            transactions[-1].append(text.split()[0])
        elif transactions and text.startswith("INSERT OR REPLACE INTO schedules"):
            transactions[-1].append("schedule state")
    assert transactions == [["UPDATE", "UPDATE"], ["schedule state"], ["UPDATE", "UPDATE"], ["UPDATE", "INSERT"]]


def test_writes_queued_while_held_wait_for_the_block_and_one_runs_updates_merge(tmp_path: Path) -> None:
    """A read of the worker channel holds the writer: a run that started and finished within
    it reaches the database once, in its final state, after the block."""
    path = tmp_path / "history.db"
    SqliteStore(path).open().close()
    _count_updates(path)
    sqlite = SqliteStore(path).open()
    queued = QueuedStore(sqlite, shared=False)
    try:
        run = transition(new_run("a", at=T0, nominal_time=T0, origin=RunOrigin.ONESHOT), RunState.STARTING, at=T0)
        queued.insert_run(run)
        assert queued.wait_written(10)
        with queued.held():
            running = transition(run, RunState.RUNNING, at=T0)
            queued.update_run(running)
            queued.update_run(transition(running, RunState.SUCCEEDED, at=T0 + timedelta(seconds=1)))
            assert not queued.wait_written(0.2), "written while the block was open"
            stored = sqlite.get_run(run.run_id)
            assert stored is not None and stored.state is RunState.STARTING
        assert queued.wait_written(10)
        stored = sqlite.get_run(run.run_id)
        assert stored is not None and stored.state is RunState.SUCCEEDED and stored.started_at == T0
    finally:
        queued.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT run_id, state FROM updates").fetchall() == [(run.run_id, "succeeded")]
    db.close()


def test_a_shared_store_is_not_held(tmp_path: Path) -> None:
    """A store other supervisors share is not held: its writes go as they come, a few run
    updates per transaction at most, so that rows stay locked briefly."""
    sqlite = SqliteStore(tmp_path / "history.db").open()
    queued = QueuedStore(sqlite, shared=True)
    try:
        run = new_run("a", at=T0, nominal_time=None, origin=RunOrigin.MANUAL)
        sqlite.insert_run(run)
        with queued.held():
            queued.update_run(transition(run, RunState.STARTING, at=T0))
            assert queued.wait_written(10)
    finally:
        queued.close()
