"""The cluster's runtime services on a real PostgreSQL: rows revised from one sequence, a
compare-and-set on update, pause for the whole cluster, removal that cancels waiting runs,
and a NOTIFY for every change (docs/cluster.md). Each test has its own schema."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from supervise.supervisor.core.registration_sync import Stored
from supervise.supervisor.core.runs import RunOrigin, RunState, new_run
from supervise.supervisor.store.cluster_registrations import Registration, RegistrationStore
from supervise.supervisor.store.postgres import PostgresStore
from tests.conftest import wait_for

JOB = {"command": ["true"], "every": "1s"}


@pytest.fixture
def runs_store(pg_schema: tuple[str, str]) -> Iterator[PostgresStore]:
    dsn, schema = pg_schema
    with PostgresStore(dsn, schema=schema) as store:
        yield store


@pytest.fixture
def node(runs_store: PostgresStore) -> Iterator[Callable[[str], RegistrationStore]]:
    made: list[RegistrationStore] = []

    def make(name: str) -> RegistrationStore:
        made.append(RegistrationStore(runs_store.dsn, schema=runs_store.schema, node=name).open())
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_an_added_row_is_seen_by_every_node_and_a_second_add_of_the_name_is_refused(
    node: Callable[[str], RegistrationStore],
) -> None:
    a, b = node("a"), node("b")
    added = a.add("job", JOB)
    assert isinstance(added, Stored) and added.revision == added.spec_revision and not added.paused
    assert b.revisions() == {"job": added}
    row = b.read(["job"])["job"]
    assert row.spec == JOB and row.updated_by == "a"
    again = b.add("job", {"command": ["false"], "every": "2s"})
    assert isinstance(again, Registration) and again.updated_by == "a"
    assert a.read()["job"].spec == JOB, "a refused add changes nothing"


def test_an_update_is_a_compare_and_set_on_the_spec_revision(node: Callable[[str], RegistrationStore]) -> None:
    a, b = node("a"), node("b")
    first = a.add("job", JOB)
    assert isinstance(first, Stored)
    second = b.update("job", {**JOB, "every": "2s"}, expected=first.spec_revision)
    assert second is not None and second.revision > first.revision and second.spec_revision == second.revision
    # a's view is stale: its update must not overwrite b's
    assert a.update("job", {**JOB, "every": "5s"}, expected=first.spec_revision) is None
    assert a.read(["job"])["job"].spec["every"] == "2s"
    assert a.update("gone", JOB, expected=0) is None


def test_pause_bumps_the_revision_but_not_the_spec_revision(node: Callable[[str], RegistrationStore]) -> None:
    a, b = node("a"), node("b")
    first = a.add("job", JOB)
    assert isinstance(first, Stored)
    paused = b.set_paused("job", True)
    assert paused is not None and paused.paused and paused.revision > first.revision
    assert paused.spec_revision == first.spec_revision
    assert a.set_paused("job", True) == paused, "pausing a paused job changes nothing"
    assert a.revisions()["job"] == paused
    # a spec update keeps the pause state
    updated = a.update("job", {**JOB, "every": "3s"}, expected=first.spec_revision)
    assert updated is not None and updated.paused
    assert a.set_paused("missing", True) is None


def test_a_name_removed_and_added_again_never_repeats_a_revision(node: Callable[[str], RegistrationStore]) -> None:
    a = node("a")
    first = a.add("job", JOB)
    assert isinstance(first, Stored)
    assert a.remove("job").existed
    assert a.revisions() == {}
    second = a.add("job", JOB)
    assert isinstance(second, Stored) and second.revision > first.revision
    assert not a.remove("other").existed


def test_removing_cancels_the_runs_that_have_not_started_and_keeps_the_rest(
    node: Callable[[str], RegistrationStore], runs_store: PostgresStore
) -> None:
    a = node("a")
    a.add("job", JOB)
    now = datetime.now(UTC)
    waiting = {
        state: replace(
            new_run("job", at=now, nominal_time=now + timedelta(seconds=i), origin=RunOrigin.SCHEDULE), state=state
        )
        for i, state in enumerate([RunState.PENDING, RunState.QUEUED, RunState.DUE, RunState.BUFFERED])
    }
    done = new_run("job", at=now, nominal_time=now - timedelta(seconds=9), origin=RunOrigin.SCHEDULE)
    done = replace(done, state=RunState.SUCCEEDED)
    other = replace(new_run("other", at=now, nominal_time=now, origin=RunOrigin.SCHEDULE), state=RunState.QUEUED)
    for run in [*waiting.values(), done, other]:  # in the store as due, then moved to their state
        assert runs_store.insert_run(replace(run, state=RunState.DUE))
        runs_store.update_run(run)
    removal = a.remove("job")
    assert removal.existed and removal.cancelled == 4
    for run in waiting.values():
        got = runs_store.get_run(run.run_id)
        assert got is not None and got.state is RunState.CANCELLED and got.reason == "the service was removed"
    got_done, got_other = runs_store.get_run(done.run_id), runs_store.get_run(other.run_id)
    assert got_done is not None and got_done.state is RunState.SUCCEEDED
    assert got_other is not None and got_other.state is RunState.QUEUED


def test_every_change_is_notified_to_listening_nodes(node: Callable[[str], RegistrationStore]) -> None:
    a, b = node("a"), node("b")
    woken = threading.Event()
    stop = threading.Event()
    listener = threading.Thread(target=b.listen, args=(woken.set, stop), daemon=True)
    listener.start()
    try:
        wait_for(woken.is_set, timeout_s=5, what="the listener to connect")  # it wakes once connected
        changes: list[Callable[[], object]] = [
            lambda: a.add("job", JOB),
            lambda: a.set_paused("job", True),
            lambda: a.update("job", JOB, expected=a.revisions()["job"].spec_revision),
            lambda: a.remove("job"),
        ]
        for change in changes:
            woken.clear()
            change()
            wait_for(woken.is_set, timeout_s=5, what="a notification of the change")
    finally:
        stop.set()
        listener.join(timeout=5)


def test_orphans_are_cancelled_only_while_the_service_has_no_row(
    node: Callable[[str], RegistrationStore], runs_store: PostgresStore
) -> None:
    a = node("a")
    a.add("job", JOB)
    now = datetime.now(UTC)
    late = new_run("job", at=now, nominal_time=now, origin=RunOrigin.SCHEDULE)  # inserted by a lagging node
    assert runs_store.insert_run(late)
    assert a.cancel_orphans("job") == 0, "the service exists: its runs are not orphans"
    assert a.remove("job").cancelled == 1
    again = new_run("job", at=now, nominal_time=now + timedelta(seconds=1), origin=RunOrigin.SCHEDULE)
    assert runs_store.insert_run(again)
    assert a.cancel_orphans("job") == 1
    got = runs_store.get_run(again.run_id)
    assert got is not None and got.state is RunState.CANCELLED and got.reason == "the service was removed"


def test_a_config_services_pause_is_one_row_revised_and_notified_only_when_it_changes(
    node: Callable[[str], RegistrationStore],
) -> None:
    a, b, c = node("a"), node("b"), node("c")
    assert b.config_pauses() == {}
    woken = threading.Event()
    stop = threading.Event()
    # c listens: a node is not woken by its own changes (it has applied them already)
    listener = threading.Thread(target=c.listen, args=(woken.set, stop), daemon=True)
    listener.start()
    try:
        wait_for(woken.is_set, timeout_s=5, what="the listener to connect")
        woken.clear()
        paused = a.set_config_paused("report", True)
        assert paused.paused and b.config_pauses() == {"report": paused}
        wait_for(woken.is_set, timeout_s=5, what="a notification of the pause")
        woken.clear()
        assert b.set_config_paused("report", True) == paused, "the state it has: no new revision"
        resumed = b.set_config_paused("report", False)
        assert resumed.revision > paused.revision and not resumed.paused
        assert a.config_pauses() == {"report": resumed}
        wait_for(woken.is_set, timeout_s=5, what="a notification of the resume")
    finally:
        stop.set()
        listener.join(timeout=5)
    assert a.revisions() == {}, "not a runtime service: no registration row"
