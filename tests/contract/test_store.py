"""The contract every store passes, run against SQLite and PostgreSQL (ids: sqlite, postgres)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from supervise.protocol.errors import SuperviseError
from supervise.supervisor.core.clock import FakeClock
from supervise.supervisor.core.runs import (
    ALLOWED,
    Run,
    RunOrigin,
    RunState,
    SkipReason,
    new_run,
    transition,
)
from supervise.supervisor.store import ScheduleState, Store, StoreError, open_store
from supervise.supervisor.store.base import CLAIMABLE, Notification, NotificationState
from supervise.supervisor.store.sqlite import SqliteStore
from tests.contract.conftest import make_store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def due(service: str = "report", minute: int = 0, **kw: object) -> Run:
    nominal = T0 + timedelta(minutes=minute)
    return new_run(service, at=nominal, nominal_time=nominal, origin=kw.pop("origin", RunOrigin.SCHEDULE), **kw)  # type: ignore[arg-type]


def finished(service: str, minute: int, state: RunState) -> Run:
    run = transition(due(service, minute), RunState.STARTING, at=T0)
    if state is RunState.SKIPPED:
        return transition(due(service, minute), state, at=T0, reason=SkipReason.OVERLAP)
    run = transition(run, RunState.RUNNING, at=T0 + timedelta(minutes=minute), pid=100)
    return transition(run, state, at=T0 + timedelta(minutes=minute, seconds=5), exit_code=0)


# -- runs -----------------------------------------------------------------------------------------


def test_a_run_with_every_field_set_reads_back_equal(store: Store) -> None:
    run = Run(
        run_id="a" * 32,
        service="report",
        nominal_time=datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN),
        origin=RunOrigin.CATCHUP,
        attempt=2,
        state=RunState.FAILED,
        created_at=datetime(2026, 3, 29, 3, 0, 0, 123456, tzinfo=BERLIN),
        reason="exit 3",
        args={"region": "eu", "n": [1, 2.5, None, True]},
        jittered_time=datetime(2026, 3, 29, 1, 0, 7, tzinfo=UTC),
        started_at=datetime(2026, 3, 29, 1, 0, 8, tzinfo=UTC),
        finished_at=datetime(2026, 3, 29, 1, 0, 9, 500000, tzinfo=UTC),
        node="host-a",
        pid=4242,
        exit_code=3,
        signal=None,
        error="Traceback (most recent call last):\n  ValueError: ünïcode",
        result={"rows": 10},
    )
    assert store.insert_run(run) is True
    back = store.get_run(run.run_id)
    assert back == run
    assert back is not None and back.created_at.utcoffset() == timedelta(0)
    assert back.duration_ms == 1500


def test_a_missing_run_is_none(store: Store) -> None:
    assert store.get_run("0" * 32) is None


@pytest.mark.parametrize(
    ("second", "inserted"),
    [
        pytest.param({}, False, id="same-occurrence-other-run-id"),
        pytest.param({"origin": RunOrigin.CATCHUP}, False, id="catchup-of-a-scheduled-time"),
        pytest.param({"origin": RunOrigin.RECOVERY}, False, id="recovery-same-attempt"),
        pytest.param({"origin": RunOrigin.BACKFILL}, True, id="backfill-is-its-own-family"),
        pytest.param({"attempt": 2}, True, id="next-attempt"),
        pytest.param({"service": "other"}, True, id="other-service"),
        pytest.param({"minute": 1}, True, id="other-nominal-time"),
    ],
)
def test_a_scheduled_occurrence_is_inserted_exactly_once(
    store: Store, second: dict[str, object], inserted: bool
) -> None:
    assert store.insert_run(due()) is True
    assert store.insert_run(due(**second)) is inserted  # type: ignore[arg-type]


def test_the_same_instant_in_another_zone_is_the_same_occurrence(store: Store) -> None:
    first = due()
    assert store.insert_run(first)
    assert first.nominal_time is not None
    again = new_run("report", at=T0, nominal_time=first.nominal_time.astimezone(BERLIN), origin=RunOrigin.SCHEDULE)
    assert store.insert_run(again) is False


def test_manual_runs_without_a_nominal_time_are_never_deduplicated(store: Store) -> None:
    runs = [new_run("report", at=T0, nominal_time=None, origin=RunOrigin.MANUAL) for _ in range(3)]
    assert [store.insert_run(r) for r in runs] == [True, True, True]


def test_a_reused_run_id_is_not_inserted_twice(store: Store) -> None:
    run = due()
    assert store.insert_run(run)
    assert store.insert_run(due(minute=5, run_id=run.run_id)) is False


def test_insert_runs_counts_only_new_occurrences(store: Store) -> None:
    store.insert_run(due(minute=0))
    assert store.insert_runs([due(minute=m) for m in range(5)]) == 4
    assert len(store.list_runs("report")) == 5


def test_update_run_writes_a_transition(store: Store) -> None:
    run = due()
    store.insert_run(run)
    started = transition(transition(run, RunState.STARTING, at=T0), RunState.RUNNING, at=T0, pid=7)
    assert store.update_run(started) is True
    assert store.get_run(run.run_id) == started


def test_update_run_with_expected_state_is_a_compare_and_set(store: Store) -> None:
    run = due()
    store.insert_run(run)
    starting = transition(run, RunState.STARTING, at=T0, node="a")
    assert store.update_run(starting, expected_state=RunState.DUE) is True
    late = transition(run, RunState.SKIPPED, at=T0, reason=SkipReason.MISSED_DEADLINE)
    assert store.update_run(late, expected_state=RunState.DUE) is False
    assert store.get_run(run.run_id) == starting


def test_update_of_an_unknown_run_is_false_so_update_or_insert_upserts(store: Store) -> None:
    run = due()
    assert store.update_run(run) is False
    assert store.update_run(run) or store.insert_run(run)
    assert store.get_run(run.run_id) == run


def test_list_runs_is_newest_first_with_filters_and_paging(store: Store) -> None:
    runs = [
        finished("a", 0, RunState.SUCCEEDED),
        finished("b", 1, RunState.FAILED),
        finished("a", 2, RunState.FAILED),
        due("a", 3),
    ]
    runs = [replace(r, created_at=T0 + timedelta(minutes=i)) for i, r in enumerate(runs)]
    store.insert_runs(runs)
    ids = [r.run_id for r in runs]
    assert [r.run_id for r in store.list_runs()] == ids[::-1]
    assert [r.run_id for r in store.list_runs("a")] == [ids[3], ids[2], ids[0]]
    assert [r.run_id for r in store.list_runs(states={RunState.FAILED})] == [ids[2], ids[1]]
    assert [r.run_id for r in store.list_runs("a", states={RunState.FAILED, RunState.DUE})] == [ids[3], ids[2]]
    assert [r.run_id for r in store.list_runs(limit=2)] == [ids[3], ids[2]]
    assert [r.run_id for r in store.list_runs(before=T0 + timedelta(minutes=2))] == [ids[1], ids[0]]
    assert store.list_runs("nobody") == []


def test_runs_left_starting_or_running_are_found_and_marked_lost(store: Store, store_spec: dict[str, str]) -> None:
    if store_spec["kind"] == "routed-cluster":
        pytest.skip("in cluster mode a run in flight is written only under its lease, and rescued by the leader")
    starting = transition(due(minute=0), RunState.STARTING, at=T0)
    running = transition(transition(due(minute=1), RunState.STARTING, at=T0), RunState.RUNNING, at=T0)
    done = finished("report", 2, RunState.SUCCEEDED)
    store.insert_runs([starting, running, done, due(minute=3)])
    found = store.runs_in_states({RunState.STARTING, RunState.RUNNING})
    assert [r.run_id for r in found] == [starting.run_id, running.run_id]
    recovered_at = T0 + timedelta(hours=1)
    for run in found:
        store.update_run(transition(run, RunState.LOST, at=recovered_at, reason="supervisor restarted"))
    assert store.runs_in_states({RunState.STARTING, RunState.RUNNING}) == []
    assert {r.state for r in store.runs_in_states({RunState.LOST})} == {RunState.LOST}


# -- claims ---------------------------------------------------------------------------------------


def test_claim_due_moves_the_run_to_starting_for_exactly_one_node(store: Store) -> None:
    run = due()
    store.insert_run(run)
    assert run.nominal_time is not None
    claimed = store.claim_due("report", run.nominal_time, "node-a")
    assert claimed is not None
    assert (claimed.run_id, claimed.state, claimed.node) == (run.run_id, RunState.STARTING, "node-a")
    assert store.claim_due("report", run.nominal_time, "node-b") is None
    assert store.claim_due("report", run.nominal_time, "node-a") == claimed  # a retried claim


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(due(state=RunState.PENDING), id="pending"),
        pytest.param(finished("report", 0, RunState.SUCCEEDED), id="succeeded"),
        pytest.param(due(state=RunState.SKIPPED, reason=SkipReason.USER_SKIP), id="skipped"),
        pytest.param(transition(due(), RunState.STARTING, at=T0, node="node-b"), id="claimed-by-another-node"),
    ],
)
def test_claim_due_ignores_runs_that_are_not_due(store: Store, run: Run) -> None:
    store.insert_run(run)
    assert store.claim_due("report", T0, "node-a") is None


def test_claimable_states_may_move_to_starting() -> None:
    assert all(RunState.STARTING in ALLOWED[state] for state in CLAIMABLE)


_RACER = r"""
import json, sys
from datetime import datetime
from supervise.supervisor.core.runs import RunOrigin, new_run
from tests.contract.conftest import make_store
spec, node = json.loads(sys.argv[1]), sys.argv[2]
store = make_store(spec)
nominal = datetime.fromisoformat(spec["nominal"])
with store:
    print("ready", flush=True)
    sys.stdin.readline()
    run = new_run("report", at=nominal, nominal_time=nominal, origin=RunOrigin.SCHEDULE)
    inserted = store.insert_run(run)
    claimed = store.claim_due("report", nominal, node)
    print(json.dumps({"inserted": inserted, "claimed": claimed.run_id if claimed else None}), flush=True)
"""


def test_racing_processes_enqueue_and_claim_an_occurrence_exactly_once(
    store: Store, store_spec: dict[str, str]
) -> None:
    # Given four processes with the store open, each waiting on stdin as a barrier
    arg = json.dumps({**store_spec, "nominal": T0.isoformat()})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, arg, f"node-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for i in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        # When all are released at once
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Then one inserted, one claimed, and the claimed run is the stored one
    assert sum(r["inserted"] for r in results) == 1
    winners = [r["claimed"] for r in results if r["claimed"]]
    assert len(winners) == 1
    stored = store.get_run(winners[0])
    assert stored is not None and stored.state is RunState.STARTING


# -- schedule state, one-shots, registrations -----------------------------------------------------


def test_schedule_state_defaults_then_round_trips(store: Store) -> None:
    assert store.get_schedule_state("report") == ScheduleState()
    state = ScheduleState(paused=True, last_fired=T0.astimezone(BERLIN), runs_so_far=7, skip_next=True, note="ops")
    store.put_schedule_state("report", state)
    assert store.get_schedule_state("report") == state
    store.put_schedule_state("report", ScheduleState(runs_so_far=8))
    assert store.get_schedule_state("report") == ScheduleState(runs_so_far=8)
    assert store.get_schedule_state("other") == ScheduleState()


def test_oneshots_are_listed_soonest_first_and_removed_by_id(store: Store) -> None:
    late = store.add_oneshot("report", T0 + timedelta(hours=2), {"full": True})
    early = store.add_oneshot("report", T0 + timedelta(hours=1))
    other = store.add_oneshot("web", T0)
    assert [(o.id, o.at, dict(o.args)) for o in store.list_oneshots("report")] == [
        (early, T0 + timedelta(hours=1), {}),
        (late, T0 + timedelta(hours=2), {"full": True}),
    ]
    assert [o.id for o in store.list_oneshots()] == [other, early, late]
    assert store.remove_oneshot(early) is True
    assert store.remove_oneshot(early) is False
    assert [o.id for o in store.list_oneshots("report")] == [late]


def test_registrations_are_stored_replaced_and_deleted(store: Store) -> None:
    store.put_registration("web", {"command": ["python", "-m", "http.server"], "restart": "always"})
    store.put_registration("beat", {"cron": "* * * * *"})
    store.put_registration("web", {"command": ["true"]})
    assert store.list_registrations() == {"beat": {"cron": "* * * * *"}, "web": {"command": ["true"]}}
    assert store.delete_registration("web") is True
    assert store.delete_registration("web") is False
    assert list(store.list_registrations()) == ["beat"]


def test_values_that_are_not_json_raise_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.put_registration("web", {"when": T0})


# -- retention ------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_per_service_and_outcome_and_never_unfinished_runs(store: Store) -> None:
    runs: list[Run] = []
    for minute in range(10):
        for service in ("a", "b"):
            runs.append(finished(service, minute, RunState.SUCCEEDED))
            runs.append(finished(service, minute + 100, RunState.FAILED))
    runs = [replace(r, created_at=r.nominal_time or T0) for r in runs]
    live = transition(due("a", 500), RunState.STARTING, at=T0)
    old_pending = new_run(
        "a", at=T0 - timedelta(days=400), nominal_time=T0, origin=RunOrigin.BACKFILL, state=RunState.PENDING
    )
    store.insert_runs([*runs, live, old_pending])

    deleted = store.prune(keep_per_outcome=3, max_age=timedelta(days=30), now=T0 + timedelta(days=1))

    assert deleted == 2 * 2 * (10 - 3)
    for service in ("a", "b"):
        for state in (RunState.SUCCEEDED, RunState.FAILED):
            kept = store.list_runs(service, states={state})
            assert len(kept) == 3
            assert kept == sorted(kept, key=lambda r: r.created_at, reverse=True)
    assert store.get_run(live.run_id) is not None
    assert store.get_run(old_pending.run_id) is not None


def test_prune_deletes_finished_runs_older_than_max_age(store: Store) -> None:
    old = finished("a", 0, RunState.SUCCEEDED)
    new = finished("a", 60 * 24 * 20, RunState.SUCCEEDED)
    new = replace(new, created_at=T0 + timedelta(days=20))
    store.insert_runs([old, new])
    assert store.prune(keep_per_outcome=100, max_age=timedelta(days=7), now=T0 + timedelta(days=21)) == 1
    assert [r.run_id for r in store.list_runs()] == [new.run_id]
    assert store.prune(keep_per_outcome=100, max_age=timedelta(days=7), now=T0 + timedelta(days=21)) == 0


# -- lifecycle ------------------------------------------------------------------------------------


def test_open_is_idempotent_and_a_closed_store_says_so(store_spec: dict[str, str]) -> None:
    if store_spec["kind"] == "routed-cluster":
        pytest.skip("a node's leased store reconnects per thread until the daemon stops (store/leased.py)")
    store = make_store(store_spec)
    assert store.open() is store.open()
    store.insert_run(due())
    store.close()
    store.close()
    with pytest.raises(StoreError, match="not open"):
        store.get_run("x")
    with make_store(store_spec) as again:  # reopening keeps the data and the schema
        assert len(again.list_runs()) == 1


# -- the queue and the window of pending one-shots ------------------------------------------------------


def oneshot(service: str, at: datetime, run_id: str | None = None) -> Run:
    return new_run(service, at=T0, nominal_time=at, origin=RunOrigin.ONESHOT, state=RunState.PENDING, run_id=run_id)


def test_two_one_shots_at_the_same_time_are_two_occurrences(store: Store) -> None:
    assert store.insert_run(oneshot("hook", T0)) is True
    assert store.insert_run(oneshot("hook", T0)) is True
    assert store.insert_run(due("hook")) is True  # and the schedule's own occurrence at that time too
    assert len(store.list_runs("hook", states={RunState.PENDING})) == 2


def test_pending_runs_come_in_time_order_and_page_after_a_key(store: Store) -> None:
    # Given one-shots of two services inserted out of order, two of them at the same time
    times = [T0 + timedelta(seconds=s) for s in (30, 10, 20, 10, 40)]
    runs = [oneshot("a" if i % 2 else "b", t, run_id=f"{i:032x}") for i, t in enumerate(times)]
    store.insert_runs(runs)
    store.insert_run(transition(oneshot("a", T0, run_id="f" * 32), RunState.CANCELLED, at=T0))  # not pending
    # When read in pages of two
    first = store.pending_runs(None, 2)
    last = first[-1]
    assert last.nominal_time is not None
    rest = store.pending_runs((last.nominal_time, last.run_id), 10)
    # Then every pending run comes once, by (time, run id)
    order = [(r.nominal_time, r.run_id) for r in first + rest]
    assert order == sorted((r.nominal_time, r.run_id) for r in runs)
    assert store.pending_runs((T0 + timedelta(seconds=40), "f" * 32), 10) == []


def test_queued_runs_of_one_service_come_in_nominal_time_order(store: Store) -> None:
    def queued(minute: int, service: str = "hook") -> Run:
        return transition(due(service, minute), RunState.QUEUED, at=T0)

    store.insert_runs([queued(3), queued(1), queued(2), queued(0, "other"), due("hook", 5)])
    got = store.queued_runs("hook", 10)
    assert [r.nominal_time for r in got] == [T0 + timedelta(minutes=m) for m in (1, 2, 3)]
    assert all(r.state is RunState.QUEUED for r in got)
    assert len(store.queued_runs("hook", 2)) == 2
    assert store.count_runs("hook", {RunState.QUEUED}) == 3
    assert store.count_runs("hook", {RunState.QUEUED, RunState.DUE}) == 4
    assert store.count_runs("nobody", {RunState.QUEUED}) == 0


def test_a_retry_keeps_the_idempotency_key_and_is_its_own_occurrence(store: Store) -> None:
    first = oneshot("hook", T0)
    retry = replace(
        new_run("hook", at=T0, nominal_time=T0, origin=RunOrigin.RECOVERY, attempt=2), key=first.idempotency_key
    )
    assert store.insert_run(first) and store.insert_run(retry)
    back = store.get_run(retry.run_id)
    assert back is not None and back.key == first.run_id and back.idempotency_key == first.run_id
    again = replace(retry, run_id="e" * 32)
    assert store.insert_run(again) is False  # the same attempt of the same key: one row


def test_store_error_is_a_supervise_error() -> None:
    assert issubclass(StoreError, SuperviseError)


# -- SQLite specifics -----------------------------------------------------------------------------


def test_sqlite_uses_wal_normal_sync_and_incremental_vacuum(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "h.db"):
        conn = sqlite3.connect(tmp_path / "h.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        conn.close()


def test_a_version_2_database_is_migrated_and_reads_its_waiting_runs_through_partial_indexes(tmp_path: Path) -> None:
    """Version 3 keeps the pending and the queued runs in indexes of their own (a run's later
    state changes leave them alone); a version 2 file is migrated in place, its rows kept."""
    from supervise.supervisor.store.sqlite import _MIGRATIONS

    path = tmp_path / "h.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    for version in (1, 2):
        for statement in _MIGRATIONS[version]:
            old.execute(statement)
    old.execute("PRAGMA user_version = 2")
    old.close()
    later, sooner = oneshot("hook", T0 + timedelta(minutes=2)), oneshot("hook", T0 + timedelta(minutes=1))
    queued = [transition(due("hook", m), RunState.QUEUED, at=T0) for m in (3, 1)]
    with SqliteStore(path) as store:
        store.insert_runs([later, sooner, *queued])
    with SqliteStore(path) as store:
        assert [r.run_id for r in store.pending_runs(None, 10)] == [sooner.run_id, later.run_id]
        assert [r.run_id for r in store.queued_runs("hook", 10)] == [queued[1].run_id, queued[0].run_id]
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_pending", "runs_queued"} <= names and "runs_waiting" not in names
        conn.close()
        plans: list[str] = []
        store._read_conn.set_trace_callback(plans.append)  # type: ignore[union-attr]
        store.pending_runs((T0, ""), 10)
        store.queued_runs("hook", 10)
        store._read_conn.set_trace_callback(None)  # type: ignore[union-attr]
        for sql, index in zip(plans, ("runs_pending", "runs_queued"), strict=True):
            plan = " ".join(row[3] for row in store._read_conn.execute("EXPLAIN QUERY PLAN " + sql))  # type: ignore[union-attr]
            assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan


def test_sqlite_write_waits_for_an_exclusive_lock_then_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with SqliteStore(path, busy_timeout_ms=300) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"is locked by another connection \(waited 0.3 s\)") as caught:
                store.insert_run(due())
            assert time.monotonic() - started >= 0.25
            assert isinstance(caught.value.cause, sqlite3.OperationalError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.insert_run(due()) is True  # the lock is gone: writes work again


def _corrupt_header(path: Path) -> None:
    path.write_bytes(b"this is not an sqlite database at all" * 100)


def _corrupt_pages(path: Path) -> None:
    with SqliteStore(path) as store:
        store.insert_runs([due(minute=m, args={"pad": "x" * 500}) for m in range(300)])
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data) - page, 3 * page):
        data[offset + 8 : offset + 200] = b"\xff" * 192  # trash cell pointers of several pages
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_corrupt_header, _corrupt_pages], ids=["not-a-database", "bad-pages"])
def test_a_corrupt_sqlite_file_is_moved_aside_and_replaced(
    tmp_path: Path, corrupt: object, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    assert callable(corrupt)
    corrupt(path)
    clock = FakeClock(wall=datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC))
    with caplog.at_level(logging.ERROR, logger="supervise.store"), SqliteStore(path, clock=clock) as store:
        assert store.insert_run(due()) is True
        assert store.recovered is not None
    moved = tmp_path / "history.db.corrupt-20260504T030201Z"
    assert moved.exists()
    assert store.recovered.moved_to == str(moved)
    assert str(path) in caplog.text and str(moved) in caplog.text


def test_a_database_from_a_newer_supervise_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this supervise understands"):
        SqliteStore(path).open()


def test_sqlite_prune_of_200k_runs_shrinks_the_file(tmp_path: Path) -> None:
    # Given 200k finished runs written in one transaction (raw SQL: the point is the file size)
    path = tmp_path / "h.db"
    with SqliteStore(path) as store:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            """INSERT INTO runs (run_id, service, nominal_time, family, origin, attempt, state, created_at, args, error)
               WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 199999)
               SELECT printf('%032x', i), 'svc' || (i % 4),
                      strftime('%Y-%m-%dT%H:%M:%f000+00:00', '2026-01-01', '+' || i || ' seconds'),
                      'schedule', 'schedule', 1, CASE WHEN (i / 4) % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
                      strftime('%Y-%m-%dT%H:%M:%f000+00:00', '2026-01-01', '+' || i || ' seconds'),
                      '{}', 'some error text ' || i
               FROM n"""
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        size_full = path.stat().st_size
        # When pruned to 10 runs per (service, outcome)
        deleted = store.prune(keep_per_outcome=10, max_age=timedelta(days=3650), now=T0)
        # Then 80 rows remain and the file gave its pages back (incremental vacuum + WAL truncate)
        assert deleted == 200_000 - 4 * 2 * 10
        assert len(store.list_runs(limit=1000)) == 4 * 2 * 10
    assert size_full > 20_000_000
    assert path.stat().st_size < 200_000, f"{path.stat().st_size} bytes after pruning {size_full}"


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db") as a:
        assert isinstance(a, SqliteStore)
    with open_store(tmp_path / "b.db") as b:
        assert isinstance(b, SqliteStore)
    with pytest.raises(StoreError, match='unsupported scheme "mysql"'):
        open_store("mysql://localhost/x")


# -- PostgreSQL specifics -------------------------------------------------------------------------


def test_postgres_reconnects_after_the_server_drops_the_connection(pg_schema: tuple[str, str]) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from supervise.supervisor.store.postgres import PostgresStore

    dsn, schema = pg_schema
    tagged = make_conninfo(dsn, application_name=schema[:60])
    with PostgresStore(tagged, schema=schema, reconnect_delay_ms=10) as store:
        store.insert_run(due(minute=0))
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (schema[:60],)
            ).fetchall()
        assert killed == [(True,)]
        assert store.insert_run(due(minute=1)) is True
        assert len(store.list_runs()) == 2


def test_postgres_unreachable_raises_store_error_after_retries() -> None:
    from supervise.supervisor.store.postgres import PostgresStore

    waits: list[float] = []
    store = PostgresStore(
        "postgresql://nobody:secret@127.0.0.1:1/none", reconnect_attempts=2, reconnect_delay_ms=100, sleep=waits.append
    )
    with pytest.raises(StoreError, match=r"unreachable after 3 attempts") as caught:
        store.open()
    assert "secret" not in str(caught.value)
    assert waits == [0.1, 0.2]


# -- notifications outbox -------------------------------------------------------------------------


def notification(key: str, *, channel: str = "ops", minute: int = 0, **kw: object) -> Notification:
    at = T0 + timedelta(minutes=minute)
    values: dict[str, object] = {
        "id": f"{key}|{channel}",
        "channel": channel,
        "service": "report",
        "event": "failure",
        "payload": {"summary": "report failed", "count": 1, "error_lines": ["boom"]},
        "created_at": at,
        "next_attempt_at": at,
    }
    return Notification(**(values | kw))  # type: ignore[arg-type]


def test_a_notification_reads_back_equal_and_its_key_is_inserted_once(store: Store) -> None:
    first = notification("run:1|failure")
    assert store.add_notification(first)
    assert not store.add_notification(replace(first, payload={"summary": "a second fact"}))
    assert store.list_notifications() == [first]


def test_due_notifications_are_pending_ones_whose_time_has_come_oldest_first(store: Store) -> None:
    for minute, key in ((2, "b"), (0, "a"), (5, "later")):
        store.add_notification(notification(key, minute=minute))
    assert [n.id for n in store.due_notifications(T0 + timedelta(minutes=3))] == ["a|ops", "b|ops"]
    assert [n.id for n in store.due_notifications(T0 + timedelta(minutes=3), limit=1)] == ["a|ops"]
    assert store.next_notification_at() == T0


def test_record_attempt_retries_then_delivers_and_counts_attempts(store: Store) -> None:
    store.add_notification(notification("a"))
    retry_at = T0 + timedelta(seconds=2)
    assert store.record_attempt("a|ops", at=T0, error="HTTP 503", retry_at=retry_at)
    assert store.due_notifications(T0) == []
    assert store.next_notification_at() == retry_at
    assert store.record_attempt("a|ops", at=retry_at, error=None, retry_at=None)
    (done,) = store.list_notifications()
    assert (done.state, done.attempts, done.delivered_at, done.last_error) == (
        NotificationState.DELIVERED,
        2,
        retry_at,
        "HTTP 503",
    )
    assert store.next_notification_at() is None
    assert not store.record_attempt("a|ops", at=retry_at, error=None, retry_at=None)  # delivered stays delivered
    assert store.list_notifications()[0].attempts == 2


def test_a_notification_out_of_attempts_is_failed_and_listed_as_such(store: Store) -> None:
    store.add_notification(notification("a"))
    store.add_notification(notification("b", minute=1))
    store.record_attempt("a|ops", at=T0, error="connection refused", retry_at=None)
    (failed,) = store.list_notifications(failed_only=True)
    assert (failed.id, failed.state, failed.attempts, failed.last_error) == (
        "a|ops",
        NotificationState.FAILED,
        1,
        "connection refused",
    )
    assert [n.id for n in store.list_notifications()] == ["b|ops", "a|ops"]  # newest first


def test_prune_notifications_keeps_pending_ones(store: Store) -> None:
    store.add_notification(notification("old-delivered"))
    store.add_notification(notification("old-pending"))
    store.add_notification(notification("new-delivered", minute=10))
    for key in ("old-delivered|ops", "new-delivered|ops"):
        store.record_attempt(key, at=T0, error=None, retry_at=None)
    assert store.prune_notifications(T0 + timedelta(minutes=5)) == 1
    assert {n.id for n in store.list_notifications()} == {"old-pending|ops", "new-delivered|ops"}


def test_the_outbox_survives_a_reopen(store_spec: dict[str, str]) -> None:
    with make_store(store_spec) as first:
        first.add_notification(notification("a"))
    with make_store(store_spec) as second:
        assert [n.id for n in second.due_notifications(T0)] == ["a|ops"]


def test_claimed_notifications_are_not_claimed_again_until_their_lease_ends(store: Store) -> None:
    store.add_notification(notification("a"))
    store.add_notification(notification("b", minute=1))
    lease_end = T0 + timedelta(minutes=5)
    (claimed,) = store.claim_notifications(T0, lease_end)
    assert (claimed.id, claimed.next_attempt_at) == ("a|ops", lease_end)
    assert store.claim_notifications(T0 + timedelta(minutes=2), lease_end) == [
        replace(notification("b", minute=1), next_attempt_at=lease_end)
    ]
    assert store.claim_notifications(T0 + timedelta(minutes=4), lease_end) == []  # both held
    (again,) = store.claim_notifications(lease_end, lease_end + timedelta(minutes=5), limit=1)
    assert again.id == "a|ops"  # its holder never recorded an attempt: the lease expired
    assert store.record_attempt("a|ops", at=lease_end, error=None, retry_at=None)
    assert [n.id for n in store.claim_notifications(lease_end + timedelta(hours=1), lease_end)] == ["b|ops"]


def test_racing_processes_claim_each_notification_exactly_once(store: Store, store_spec: dict[str, str]) -> None:
    for i in range(40):
        store.add_notification(notification(f"n{i}"))
    script = (
        "import json, sys\n"
        "from datetime import datetime, timedelta\n"
        "from tests.contract.conftest import make_store\n"
        "spec = json.loads(sys.argv[1]); now = datetime.fromisoformat(sys.argv[2])\n"
        "with make_store(spec) as s:\n"
        "    got = []\n"
        "    for _ in range(20):\n"
        "        got += [n.id for n in s.claim_notifications(now, now + timedelta(hours=1), limit=3)]\n"
        "print(json.dumps(got))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(store_spec), T0.isoformat()],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(3)
    ]
    claimed = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    every = [i for got in claimed for i in got]
    assert sorted(every) == sorted(f"n{i}|ops" for i in range(40))  # each exactly once


def test_forget_service_deletes_everything_of_one_service_and_nothing_else(store: Store) -> None:
    for service in ("acme-report", "web"):
        store.insert_run(finished(service, 1, RunState.SUCCEEDED))
        store.insert_run(due(service, 2))
        store.add_oneshot(service, T0)
        store.put_schedule_state(service, ScheduleState(paused=True))
        store.put_registration(service, {"command": ["true"]})
        store.add_notification(notification(f"{service}|failure", service=service))
    assert store.forget_service("acme-report") == 2
    assert store.list_runs("acme-report") == [] and len(store.list_runs("web")) == 2
    assert [o.service for o in store.list_oneshots()] == ["web"]
    assert store.get_schedule_state("acme-report") == ScheduleState()
    assert store.get_schedule_state("web").paused
    assert list(store.list_registrations()) == ["web"]
    assert [n.service for n in store.list_notifications()] == ["web"]
    assert store.forget_service("acme-report") == 0
