"""What the routed store adds to the contract (test_store.py runs it too): the stores it spans,
its batch, dropping a tenant's store, owners learnt at open, and the move of shared rows."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervise.supervisor.core.runs import RunOrigin, RunState, new_run
from supervise.supervisor.store import ScheduleState, StoreError
from supervise.supervisor.store.routed import RoutedStore
from supervise.supervisor.store.sqlite import SqliteStore
from supervise.supervisor.store.tenants import PostgresTenants, SqliteTenants, move_tenant_rows
from tests.contract.conftest import drop_schema, postgres_dsn
from tests.contract.test_store import T0, due, finished, notification

OWNERS = {"acme-job": "acme", "globex-job": "globex"}


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[RoutedStore]:
    with RoutedStore(SqliteStore(tmp_path / "history.db"), SqliteTenants(tmp_path / "tenants"), OWNERS) as store:
        yield store


def rows_of(path: Path) -> set[str]:
    with SqliteStore(path) as store:
        return {r.run_id for r in store.list_runs(limit=1000)}


def test_each_services_rows_are_in_its_tenants_file_and_reads_span_every_file(
    routed: RoutedStore, tmp_path: Path
) -> None:
    runs = {s: due(s, minute) for minute, s in enumerate(("acme-job", "globex-job", "own-job"))}
    assert routed.insert_runs(list(runs.values())) == 3
    assert rows_of(tmp_path / "tenants" / "acme" / "history.db") == {runs["acme-job"].run_id}
    assert rows_of(tmp_path / "tenants" / "globex" / "history.db") == {runs["globex-job"].run_id}
    assert rows_of(tmp_path / "history.db") == {runs["own-job"].run_id}
    assert [r.service for r in routed.list_runs()] == ["own-job", "globex-job", "acme-job"]  # newest first
    assert routed.get_run(runs["globex-job"].run_id) == runs["globex-job"]
    assert [r.run_id for r in routed.runs_in_states({RunState.DUE})] == [r.run_id for r in runs.values()]


def test_the_outbox_is_claimed_across_the_stores_soonest_first_within_the_limit(routed: RoutedStore) -> None:
    for minute, service in enumerate(("globex-job", "own-job", "acme-job", "globex-job")):
        routed.add_notification(notification(f"n{minute}", minute=minute, service=service))
    assert routed.next_notification_at() == T0
    lease = T0 + timedelta(hours=1)
    first = routed.claim_notifications(T0 + timedelta(minutes=10), lease, limit=3)
    assert sorted(n.id for n in first) == ["n0|ops", "n1|ops", "n2|ops"]
    (last,) = routed.claim_notifications(T0 + timedelta(minutes=10), lease, limit=3)
    assert last.id == "n3|ops"
    assert routed.record_attempt("n2|ops", at=T0, error=None, retry_at=None)  # a row of acme's store
    assert [n.id for n in routed.list_notifications(limit=2)] == ["n3|ops", "n2|ops"]
    assert routed.prune_notifications(T0 + timedelta(days=1)) == 1


def test_a_batch_commits_in_every_store_it_touched_or_in_none(routed: RoutedStore, tmp_path: Path) -> None:
    assert routed.batch is not None  # SQLite stores have one
    with routed.batch():
        routed.insert_run(due("acme-job", 1))
        routed.insert_run(due("own-job", 1))
    assert len(routed.list_runs(limit=10)) == 2
    with pytest.raises(RuntimeError), routed.batch():
        routed.insert_run(due("acme-job", 2))
        routed.put_schedule_state("own-job", ScheduleState(paused=True))
        raise RuntimeError("a write failed")
    assert len(routed.list_runs(limit=10)) == 2
    assert routed.get_schedule_state("own-job") == ScheduleState()


def test_a_dropped_tenants_file_is_gone_and_the_other_tenant_keeps_its_rows(
    routed: RoutedStore, tmp_path: Path
) -> None:
    routed.insert_run(finished("acme-job", 1, RunState.SUCCEEDED))
    kept = finished("globex-job", 1, RunState.SUCCEEDED)
    routed.insert_run(kept)
    assert routed.drop_tenant("acme") is True
    assert not (tmp_path / "tenants" / "acme").exists()
    assert routed.list_runs() == [kept]
    assert routed.owner("acme-job") is None  # routed to the main store until a tenant claims it again
    assert routed.drop_tenant("acme") is False
    with pytest.raises(ValueError, match="tenant must match"):
        routed.drop_tenant("../etc")


def test_owners_are_learnt_from_the_tenants_registrations_at_open(routed: RoutedStore, tmp_path: Path) -> None:
    routed.put_registration("acme-job", {"command": ["true"]})
    routed.close()
    with RoutedStore(SqliteStore(tmp_path / "history.db"), SqliteTenants(tmp_path / "tenants")) as again:
        assert again.owner("acme-job") == "acme"
        again.insert_run(due("acme-job"))
    assert len(rows_of(tmp_path / "tenants" / "acme" / "history.db")) == 1


def test_rows_in_the_shared_store_move_to_the_tenants_store_once(tmp_path: Path) -> None:
    shared = SqliteStore(tmp_path / "history.db").open()
    moved_runs = [finished("acme-job", m, RunState.SUCCEEDED) for m in (1, 2)]
    shared.insert_runs([*moved_runs, due("own-job")])
    shared.put_schedule_state("acme-job", ScheduleState(runs_so_far=2))
    shared.put_registration("acme-job", {"command": ["true"]})
    shared.add_notification(notification("a", service="acme-job"))
    shared.add_oneshot("old-job", T0)  # the old one-shot format: this service waits for the next start
    shared.put_registration("old-job", {"command": ["true"]})
    target = SqliteStore(tmp_path / "acme.db").open()
    try:
        owners = {"acme-job": "acme", "old-job": "acme"}
        assert move_tenant_rows(shared, owners, lambda tenant: target) == 2
        assert move_tenant_rows(shared, owners, lambda tenant: target) == 0
        assert {r.run_id for r in target.list_runs()} == {r.run_id for r in moved_runs}
        assert target.get_schedule_state("acme-job").runs_so_far == 2
        assert list(target.list_registrations()) == ["acme-job"]
        assert [n.id for n in target.list_notifications()] == ["a|ops"]
        assert {r.service for r in shared.list_runs()} == {"own-job"}
        assert sorted(shared.list_registrations()) == ["old-job"]
        assert shared.list_notifications() == []
    finally:
        shared.close()
        target.close()


def test_tenant_names_are_checked_before_any_file_or_schema_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tenant must match"):
        SqliteTenants(tmp_path).open("Acme/../x")
    with pytest.raises(StoreError, match="63 bytes"):
        PostgresTenants("postgresql://127.0.0.1/test", "s" * 40).schema_of("t" * 20)


def test_postgresql_tenants_are_schemas_listed_and_dropped(tmp_path: Path) -> None:
    dsn = postgres_dsn()
    schema = f"sv_routed_{uuid.uuid4().hex[:10]}"
    places = PostgresTenants(dsn, schema)
    try:
        with RoutedStore(SqliteStore(tmp_path / "history.db"), places, OWNERS) as routed:
            run = new_run("acme-job", at=datetime.now(UTC), nominal_time=None, origin=RunOrigin.MANUAL)
            routed.insert_run(run)
            routed.assign("globex-job", "globex")
            assert places.existing() == ["acme", "globex"]
            assert routed.get_run(run.run_id) == run
            assert routed.drop_tenant("acme") is True
            assert places.existing() == ["globex"]
            assert routed.get_run(run.run_id) is None
    finally:
        for name in (schema, f"{schema}_tenant_acme", f"{schema}_tenant_globex"):
            drop_schema(dsn, name)


def test_batches_of_two_threads_at_once_each_commit_or_roll_back_alone(routed: RoutedStore) -> None:
    # The history writer and the notifier's thread may each be inside `batch()` at the same time.
    import threading

    assert routed.batch is not None
    first_open, second_open, rolled_back = threading.Event(), threading.Event(), threading.Event()
    failed, kept = due("acme-job", 1), due("own-job", 2)

    def failing() -> None:
        assert routed.batch is not None
        with contextlib.suppress(RuntimeError), routed.batch():
            first_open.set()
            second_open.wait(10)  # the other thread's batch opened after this one
            routed.insert_run(failed)
            routed.insert_run(due("own-job", 3))
            raise RuntimeError("a write failed")
        rolled_back.set()

    thread = threading.Thread(target=failing)
    thread.start()
    assert first_open.wait(10)
    with routed.batch():
        second_open.set()
        assert rolled_back.wait(10)
        routed.insert_run(kept)
    thread.join(10)
    assert [r.run_id for r in routed.list_runs(limit=10)] == [kept.run_id]
