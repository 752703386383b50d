"""A notification is written in the transaction of the change that caused it, on both stores.

`batch()` groups a run's final state, its no-storm episode and its outbox rows in one
transaction; the history's writer (`QueuedStore.together()`) uses it, and skips the rows
of a group whose run write was refused (a stale epoch in cluster mode). Episodes are
taken under a lock, so two supervisors sharing a store never both open one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from supervise.supervisor.core.alerts import Alert, Episode, observe
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.base import Notification, Store, StoreError
from supervise.supervisor.store.leased import LeasedRuns
from supervise.supervisor.store.postgres import PostgresStore
from supervise.supervisor.store.queued import QueuedStore
from tests.conftest import wait_for
from tests.contract.conftest import make_store
from tests.contract.test_cluster_store import leased, node, runs_store  # noqa: F401 (fixtures)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ON = frozenset({"failure", "recovered"})


def running_run() -> Run:
    run = new_run("report", at=T0, nominal_time=None, origin=RunOrigin.MANUAL)
    return transition(transition(run, RunState.STARTING, at=T0), RunState.RUNNING, at=T0)


def row(run: Run, channel: str = "ops") -> Notification:
    return Notification(
        id=f"run:{run.run_id}|failure|{channel}",
        channel=channel,
        service=run.service,
        event="failure",
        payload={"summary": "report failed"},
        created_at=T0,
        next_attempt_at=T0,
    )


def failed(run: Run) -> Run:
    return transition(run, RunState.FAILED, at=T0 + timedelta(seconds=1), error="exit 3")


def test_a_batch_whose_last_statement_fails_leaves_neither_the_state_change_nor_the_rows(store: Store) -> None:
    run = running_run()
    store.insert_run(run)
    batch = store.batch  # type: ignore[attr-defined]
    with pytest.raises(StoreError), batch():
        assert store.update_run(failed(run))
        assert store.add_notification(row(run))
        episode, _ = store.take_episode("default", "report", 0)
        store.put_episode("default", "report", replace(episode, failing_since_ms=1, failures=1, number=1))
        store.add_notification(replace(row(run, "mail"), channel=None))  # type: ignore[arg-type]  # NOT NULL
    stored = store.get_run(run.run_id)
    assert stored is not None and stored.state is RunState.RUNNING
    assert store.list_notifications() == []
    assert store.active_episodes(0) == []
    # and the same group without the bad statement commits whole
    with batch():
        store.update_run(failed(run))
        store.add_notification(row(run))
    assert store.get_run(run.run_id).state is RunState.FAILED  # type: ignore[union-attr]
    assert [n.id for n in store.list_notifications()] == [row(run).id]


def test_the_writer_commits_a_group_whole_and_retries_it_whole(store: Store, store_spec: dict[str, str]) -> None:
    run = running_run()
    store.insert_run(run)
    queued = QueuedStore(store, shared=False)
    tries: list[str] = []

    with make_store(store_spec) as reader:

        def rows() -> None:
            # what another connection sees while the group is written: the state committed before
            seen = reader.get_run(run.run_id)
            tries.append(str(seen.state) if seen is not None else "none")
            if len(tries) == 1:
                store.add_notification(replace(row(run), channel=None))  # type: ignore[arg-type]  # NOT NULL
            store.add_notification(row(run))

        try:
            with queued.together():
                queued.update_run(failed(run))
                queued.add_notifications(rows)
            assert queued.wait_written(20)
        finally:
            queued.close()
        assert tries == ["running", "running"], "the failed try committed nothing, the retry wrote the group again"
        assert reader.get_run(run.run_id).state is RunState.FAILED  # type: ignore[union-attr]
        assert [n.id for n in reader.list_notifications()] == [row(run).id]


def test_two_supervisors_racing_on_one_episode_open_it_once(store: Store, store_spec: dict[str, str]) -> None:
    stores = [make_store(store_spec).open() for _ in range(4)]
    start = threading.Barrier(len(stores))
    sent: list[Alert] = []

    def fail_once(s: Store) -> None:
        start.wait()
        with s.batch():  # type: ignore[attr-defined]
            episode, now_ms = s.take_episode("default", "report", 1_000)
            after, alerts = observe(episode, "report", "failure", on=ON, min_interval_ms=300_000, now_ms=now_ms)
            s.put_episode("default", "report", after)
        sent.extend(alerts)

    threads = [threading.Thread(target=fail_once, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert [a.event for a in sent] == ["failure"], "one of them opened the episode, the others counted into it"
    with store.batch():  # type: ignore[attr-defined]
        episode, _ = store.take_episode("default", "report", 1_000)
    assert (episode.number, episode.failures, dict(episode.held)) == (1, 4, {"failure": 3})
    (active,) = store.active_episodes(1_000)
    assert (active.subject, active.failing, active.due) == ("report", True, False)


def test_an_episode_survives_a_reopen_and_is_forgotten_with_its_service(store_spec: dict[str, str]) -> None:
    with make_store(store_spec) as first, first.batch():  # type: ignore[attr-defined]
        first.put_episode("own", "report", Episode(number=3, failing_since_ms=5, failures=2, held={"lost": 1}))
    with make_store(store_spec) as second:
        with second.batch():  # type: ignore[attr-defined]
            episode, _ = second.take_episode("own", "report", 0)
        assert episode == Episode(number=3, failing_since_ms=5, failures=2, held={"lost": 1})
        second.forget_service("report")
        assert second.active_episodes(0) == []


# -- cluster mode: the final write is a compare-and-set on the run's epoch ----------------------------


def test_a_fenced_final_write_writes_no_notification_and_a_held_lease_writes_both(
    runs_store: PostgresStore,  # noqa: F811
    leased: Callable[[str], LeasedRuns],  # noqa: F811
) -> None:
    a_runs = leased("a")
    leader = node(runs_store, "b")
    leader.join()
    now = datetime.now(UTC)
    stale = transition(new_run("job", at=now, nominal_time=None, origin=RunOrigin.MANUAL), RunState.QUEUED, at=now)
    fresh = replace(stale, run_id="f" * 32)
    for run in (stale, fresh):
        assert runs_store.insert_run(run)
        assert a_runs.claim(run.run_id) is not None
        assert a_runs.update_run(transition(transition(run, RunState.STARTING, at=now), RunState.RUNNING, at=now))
    # a renews its lease on `fresh` only: once `stale`'s lease expires, the leader marks it lost (epoch + 1)
    a_node = node(runs_store, "a")
    a_node.join()

    def rescued() -> list[dict[str, object]]:
        a_node.beat([(fresh.run_id, a_runs.epoch_of(fresh.run_id) or 0)], [])
        return leader.rescue().lost

    lost = wait_for(rescued, timeout_s=10, what="the stale run's rescue")
    assert [r["run_id"] for r in lost] == [stale.run_id]
    a_node.close()

    queued = QueuedStore(a_runs, shared=True)
    try:
        for run in (stale, fresh):
            final = failed(transition(transition(run, RunState.STARTING, at=now), RunState.RUNNING, at=now))
            with queued.together():
                queued.update_run(final)
                queued.add_notifications(lambda run=run: _rows_and_episode(a_runs, run))
        assert queued.wait_written(20)
    finally:
        queued.close()
        leader.close()
    assert a_runs.fenced_writes == 1
    assert runs_store.get_run(stale.run_id).state is RunState.LOST  # type: ignore[union-attr]
    assert runs_store.get_run(fresh.run_id).state is RunState.FAILED  # type: ignore[union-attr]
    assert [n.id for n in runs_store.list_notifications()] == [row(fresh).id], "none for the fenced write"
    with runs_store.batch():
        episode, _ = runs_store.take_episode("default", "job", 0)
    assert episode.failures == 1, "the fenced write counted nothing in the episode either"


def _rows_and_episode(store: LeasedRuns, run: Run) -> None:
    episode, now_ms = store.take_episode("default", run.service, 0)
    after, _ = observe(episode, run.service, "failure", on=ON, min_interval_ms=1000, now_ms=now_ms)
    store.put_episode("default", run.service, after)
    store.add_notification(replace(row(run), service=run.service))


# -- a missed occurrence: its `skipped` row and its outbox rows are one transaction ------------------


def missed(nominal: datetime = T0) -> Run:
    run = new_run("report", at=T0, nominal_time=nominal, origin=RunOrigin.CATCHUP)
    return transition(run, RunState.SKIPPED, at=T0, reason="missed")


def missed_row(run: Run) -> Notification:
    return replace(row(run), id=f"run:{run.run_id}|missed|ops", event="missed")


@pytest.mark.parametrize("shared", [False, True])
def test_a_missed_occurrence_is_inserted_with_its_rows_and_a_failed_try_leaves_neither(
    store: Store, store_spec: dict[str, str], shared: bool
) -> None:
    run = missed()
    queued = QueuedStore(store, shared=shared)
    seen: list[tuple[int, int]] = []
    won: list[str] = []

    with make_store(store_spec) as reader:

        def rows() -> None:
            episode, now_ms = store.take_episode("default", "report", 0)
            after, _ = observe(
                episode, "report", "missed", on=frozenset({"missed"}), min_interval_ms=1000, now_ms=now_ms
            )
            store.put_episode("default", "report", after)
            if not seen:  # the first try fails after the insert and the episode
                seen.append((len(reader.list_runs("report")), len(reader.list_notifications())))
                store.add_notification(replace(missed_row(run), channel=None))  # type: ignore[arg-type]  # NOT NULL
            store.add_notification(missed_row(run))

        try:
            with queued.together():
                queued.insert_first(run, won=lambda: won.append(run.run_id))
                queued.add_notifications(rows)
            assert queued.wait_written(20)
        finally:
            queued.close()
        assert seen == [(0, 0)], "before the failing statement nothing of the group was visible"
        assert [r.run_id for r in reader.list_runs("report")] == [run.run_id]
        assert reader.get_run(run.run_id).state is RunState.SKIPPED  # type: ignore[union-attr]
        assert [n.id for n in reader.list_notifications()] == [missed_row(run).id]
        assert won == [run.run_id], "told once, after the commit that won"
        with reader.batch():  # type: ignore[attr-defined]
            episode, _ = reader.take_episode("default", "report", 0)
        assert episode.failures == 1, "the failed try counted nothing: rolled back with the insert"


def test_a_missed_occurrence_another_supervisor_recorded_first_writes_nothing(
    store: Store, store_spec: dict[str, str]
) -> None:
    first = missed()
    assert store.insert_run(first)  # the other supervisor's insert won the occurrence's unique key
    late = missed()  # the same occurrence, as this supervisor sees it
    queued = QueuedStore(store, shared=True)
    won: list[str] = []
    decided: list[str] = []

    def rows() -> None:
        decided.append("decided")
        store.add_notification(missed_row(late))
        with store.batch():  # type: ignore[attr-defined]
            episode, _ = store.take_episode("default", "report", 0)
            store.put_episode("default", "report", replace(episode, failing_since_ms=1, failures=1, number=1))

    try:
        with queued.together():
            queued.insert_first(late, won=lambda: won.append(late.run_id))
            queued.add_notifications(rows)
        assert queued.wait_written(20)
    finally:
        queued.close()
    with make_store(store_spec) as reader:
        assert [r.run_id for r in reader.list_runs("report")] == [first.run_id]
        assert reader.list_notifications() == []
        assert reader.active_episodes(0) == []
    assert (won, decided) == ([], []), "the insert that lost decides nothing and is not told"
