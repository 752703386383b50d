"""The cluster tables on a real PostgreSQL: membership, leases with epochs, the leader, rescue,
and runs fenced by their epoch (docs/cluster.md). Each test has its own schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.base import NodeNameTaken
from supervise.supervisor.store.cluster import ClusterStore
from supervise.supervisor.store.leased import LeasedRuns
from supervise.supervisor.store.postgres import PostgresStore
from tests.conftest import wait_for

TTL_MS = 1000


@pytest.fixture
def runs_store(pg_schema: tuple[str, str]) -> Iterator[PostgresStore]:
    dsn, schema = pg_schema
    with PostgresStore(dsn, schema=schema) as store:
        yield store


@pytest.fixture
def leased(runs_store: PostgresStore) -> Iterator[Callable[[str], LeasedRuns]]:
    """LeasedRuns of a node, closed after the test."""
    made: list[LeasedRuns] = []

    def make(name: str, ttl_ms: int = TTL_MS) -> LeasedRuns:
        made.append(
            LeasedRuns(PostgresStore(runs_store.dsn, schema=runs_store.schema), node=name, lease_ttl_ms=ttl_ms).open()
        )
        return made[-1]

    yield make
    for runs in made:
        runs.close()


def node(store: PostgresStore, name: str, ttl_ms: int = TTL_MS) -> ClusterStore:
    return ClusterStore(store.dsn, schema=store.schema, node=name, lease_ttl_ms=ttl_ms).open()


def test_a_live_node_name_cannot_be_taken_twice_but_a_dead_ones_can(runs_store: PostgresStore) -> None:
    first = node(runs_store, "n1")
    first.join()
    second = node(runs_store, "n1")
    with pytest.raises(NodeNameTaken, match='node name "n1" is in use by a live node'):
        second.join()
    assert first.beat([], []).alive
    # once n1's heartbeat expires (on the database clock), the name is free again
    wait_for(lambda: second.join() is None, timeout_s=5, what="the name to be free")
    assert not first.beat([], []).alive, "the old incarnation must find it is no longer a member"
    first.close()
    second.close()


def test_a_clean_leave_frees_the_name_and_the_leases_at_once(runs_store: PostgresStore) -> None:
    a = node(runs_store, "a", ttl_ms=60_000)
    a.join()
    assert a.acquire("single", 1) == (0, 1)
    a.leave()
    b = node(runs_store, "b", ttl_ms=60_000)
    b.join()
    assert b.acquire("single", 1) == (0, 2), "the copy is free the moment a leaves, with a higher epoch"
    again = node(runs_store, "a", ttl_ms=60_000)
    again.join()
    for c in (a, b, again):
        c.close()


def test_placements_are_exclusive_renewed_by_the_holder_and_taken_over_after_expiry(
    runs_store: PostgresStore,
) -> None:
    a, b = node(runs_store, "a"), node(runs_store, "b")
    a.join()
    b.join()
    assert a.acquire("single", 1) == (0, 1)
    assert b.acquire("single", 1) is None
    assert a.beat([], [("single", 0, 1)]).placements == {("single", 0)}
    assert b.acquire("single", 1) is None
    # a stops renewing: after lease_ttl b takes it with a higher epoch, and a's renewal fails
    taken = wait_for(lambda: b.acquire("single", 1), timeout_s=5, what="b to take over")
    assert taken == (0, 2)
    assert a.beat([], [("single", 0, 1)]).placements == frozenset()
    # any:2 spreads: two slots, and the holder of one does not renew the other
    assert a.acquire("pair", 2) == (0, 1)
    assert b.acquire("pair", 2) == (1, 1)
    a.close()
    b.close()


def test_one_leader_at_a_time_and_another_when_it_stops_renewing(runs_store: PostgresStore) -> None:
    a, b = node(runs_store, "a"), node(runs_store, "b")
    a.join()
    b.join()
    assert a.beat([], []).leader
    assert not b.beat([], []).leader
    assert a.beat([], []).leader
    wait_for(lambda: b.beat([], []).leader, timeout_s=5, what="b to lead once a is silent")
    status = b.status()
    assert status["leader"]["node"] == "b" and status["leader"]["epoch"] == 2
    assert {n["name"] for n in status["nodes"]} == {"a", "b"}
    assert a.mark_lost_nodes() == ["a"] or b.mark_lost_nodes() == ["a"]
    a.close()
    b.close()


def _run(service: str = "job", state: RunState = RunState.STARTING) -> Run:
    run = new_run(service, at=datetime.now(UTC), nominal_time=None, origin=RunOrigin.MANUAL)
    return run if state is RunState.PENDING else transition(run, state, at=datetime.now(UTC))


def test_a_late_writer_from_a_dead_lease_changes_nothing(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    """The river#1302 shape: the rescuer and the old holder race; the compare-and-set on the
    epoch lets exactly one of them write."""
    a_runs = leased("a")
    b_runs = leased("b")
    leader = node(runs_store, "b")
    leader.join()
    now = datetime.now(UTC)
    queued = transition(new_run("job", at=now, nominal_time=None, origin=RunOrigin.MANUAL), RunState.QUEUED, at=now)
    assert runs_store.insert_run(queued)
    assert a_runs.claim(queued.run_id) == 1
    assert b_runs.claim(queued.run_id) is None, "a run is claimed once"
    running = transition(transition(queued, RunState.STARTING, at=now), RunState.RUNNING, at=now)
    assert a_runs.update_run(running)
    # a goes silent: its lease expires and the leader marks the started run lost (epoch 2)
    rescue = wait_for(lambda: leader.rescue().lost, timeout_s=5, what="the rescue")
    assert [r["run_id"] for r in rescue] == [queued.run_id]
    late = transition(running, RunState.SUCCEEDED, at=datetime.now(UTC))
    assert not a_runs.update_run(late), "the old holder's finish must be refused"
    stored = runs_store.get_run(queued.run_id)
    assert stored is not None and stored.state is RunState.LOST
    assert a_runs.fenced_writes == 1 and a_runs.epoch_of(queued.run_id) is None
    assert not a_runs.update_run(replace(late, error="again")), "and every later write too"
    leader.close()


def test_an_expired_run_that_had_not_started_is_queued_again_and_claimable(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    a_runs = leased("a")
    b_runs = leased("b")
    leader = node(runs_store, "b")
    run = _run()
    assert a_runs.insert_run(run)
    assert a_runs.held() == [(run.run_id, 1)]
    rescued = wait_for(lambda: leader.rescue().requeued, timeout_s=5, what="the rescue")
    assert rescued == [run.run_id]
    assert b_runs.claim(run.run_id) == 3  # insert 1, rescue 2, claim 3
    stored = runs_store.get_run(run.run_id)
    assert stored is not None and stored.state is RunState.STARTING and stored.node == "b"
    leader.close()


def test_renewal_keeps_a_run_lease_alive_and_drops_one_taken_over(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    a = node(runs_store, "a")
    a.join()
    a_runs = leased("a")
    run = _run()
    assert a_runs.insert_run(run)
    beat = a.beat(a_runs.held(), [])
    assert beat.runs == {run.run_id}
    # a wrong epoch (someone else's lease now) is not renewed
    assert a.beat([(run.run_id, 7)], []).runs == frozenset()
    a.close()


def test_relayed_commands_reach_their_node_once_and_old_ones_are_pruned(runs_store: PostgresStore) -> None:
    a, b = node(runs_store, "a"), node(runs_store, "b")
    command_id = a.send("b", "cancel", {"run_id": "r1"})
    assert a.reply(command_id) is None
    assert a.take_commands() == [], "a command is for its node only"
    taken = b.take_commands()
    assert [(r["id"], r["command"], r["args"]) for r in taken] == [(command_id, "cancel", {"run_id": "r1"})]
    assert b.take_commands() == [], "taken once"
    b.answer(command_id, {"ok": True, "result": {"run_id": "r1"}})
    assert a.reply(command_id) == {"ok": True, "result": {"run_id": "r1"}}
    assert a.prune_commands() == 0, "a fresh answer is kept"
    a.close()
    b.close()


def test_a_one_shot_left_due_by_a_node_that_never_claimed_it_is_queued_again(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    """A node moved the one-shot out of `pending` (its compare-and-set) and died before the
    claim: there is no lease to expire, so a lease's time past the run's datetime is the sign."""
    b_runs = leased("b")
    leader = node(runs_store, "b")
    now = datetime.now(UTC)
    late = transition(
        new_run(
            "job", at=now, nominal_time=now - timedelta(seconds=5), origin=RunOrigin.ONESHOT, state=RunState.PENDING
        ),
        RunState.DUE,
        at=now,
    )
    recent = transition(
        new_run("job", at=now, nominal_time=now, origin=RunOrigin.ONESHOT, state=RunState.PENDING), RunState.DUE, at=now
    )
    assert runs_store.insert_run(late) and runs_store.insert_run(recent)
    assert leader.rescue().requeued == [late.run_id]  # the recent one may still be claimed by its node
    stored = runs_store.get_run(late.run_id)
    assert stored is not None and stored.state is RunState.QUEUED and "did not claim" in (stored.reason or "")
    assert b_runs.claim(late.run_id) is not None
    leader.close()


def _oneshot(at: datetime, service: str = "hook") -> Run:
    return new_run(service, at=datetime.now(UTC), nominal_time=at, origin=RunOrigin.ONESHOT, state=RunState.PENDING)


def test_a_schedule_batch_is_inserted_in_one_go_and_an_existing_occurrence_is_left_out(
    runs_store: PostgresStore, leased: Callable[..., LeasedRuns]
) -> None:
    node(runs_store, "a").close()  # the cluster's columns
    a_runs = leased("a", ttl_ms=15_000)  # the default lease: its connection's idle-in-transaction limit is 7.5 s
    now = datetime.now(UTC)
    runs = [_oneshot(now + timedelta(seconds=i)) for i in range(1200)]  # more than one INSERT's worth of rows
    assert a_runs.insert_waiting(runs) == {r.run_id for r in runs}
    assert runs_store.count_runs("hook", {RunState.PENDING}) == 1200
    stored = runs_store.get_run(runs[777].run_id)
    assert stored is not None and stored.nominal_time == runs[777].nominal_time and stored.args == runs[777].args
    assert a_runs.held() == [], "waiting runs carry no lease"
    # a run sent again (a retried call) is not inserted twice, nor is an occurrence that exists; new ones are
    tick = new_run("tick", at=now, nominal_time=now, origin=RunOrigin.SCHEDULE, state=RunState.PENDING)
    same_tick = new_run("tick", at=now, nominal_time=now, origin=RunOrigin.SCHEDULE, state=RunState.PENDING)
    fresh = _oneshot(now - timedelta(seconds=1))
    assert a_runs.insert_waiting([tick]) == {tick.run_id}
    assert a_runs.insert_waiting([runs[0], same_tick, fresh]) == {fresh.run_id}
    assert runs_store.get_run(same_tick.run_id) is None
    with pytest.raises(ValueError, match="in flight"):
        a_runs.insert_waiting([_run()])


def test_due_one_shots_are_claimed_soonest_first_up_to_the_limit_under_a_lease(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    node(runs_store, "a").close()  # the cluster's columns
    a_runs = leased("a")
    now = datetime.now(UTC)
    due = [_oneshot(now - timedelta(seconds=10 - i)) for i in range(5)]
    later = _oneshot(now + timedelta(hours=1))
    other = _oneshot(now - timedelta(seconds=20), service="other")
    assert len(a_runs.insert_waiting([*reversed(due), later, other])) == 7
    assert a_runs.due_services(now) == {"hook", "other"}
    taken = a_runs.claim_due_oneshots("hook", now, limit=3)
    assert [r.run_id for r in taken] == [r.run_id for r in due[:3]], "the soonest first, at most the limit"
    assert all(r.state is RunState.PENDING for r in taken), "returned as they were before the claim"
    assert sorted(a_runs.held()) == sorted((r.run_id, 1) for r in taken)
    stored = runs_store.get_run(taken[0].run_id)
    assert stored is not None and stored.state is RunState.STARTING and stored.node == "a"
    rest = a_runs.claim_due_oneshots("hook", now, limit=10)
    assert [r.run_id for r in rest] == [r.run_id for r in due[3:]], "a run not yet due is not taken"
    assert a_runs.claim_due_oneshots("hook", now, limit=10) == []
    assert a_runs.due_services(now) == {"other"}
    # the claimed run is fenced like any other: its writes are a compare-and-set on the epoch
    started = transition(taken[0], RunState.STARTING, at=now)
    assert a_runs.update_run(started)


def test_two_nodes_claiming_due_one_shots_at_once_never_get_the_same_run(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    """Claimers in threads, over and over, each for a few runs (FOR UPDATE SKIP LOCKED): every
    run goes to exactly one of them, and none is left behind."""
    import threading

    node(runs_store, "a").close()  # the cluster's columns
    now = datetime.now(UTC)
    runs = [_oneshot(now - timedelta(milliseconds=i)) for i in range(600)]
    assert runs_store.insert_runs(runs) == 600
    claimers = [leased(f"n{i}") for i in range(4)]
    got: dict[str, list[str]] = {c.node: [] for c in claimers}
    start = threading.Barrier(len(claimers))

    def claim(runs_of: LeasedRuns) -> None:
        start.wait()
        while True:
            taken = runs_of.claim_due_oneshots("hook", now, limit=7)
            if not taken and not runs_of.due_services(now):
                return
            got[runs_of.node] += [r.run_id for r in taken]

    threads = [threading.Thread(target=claim, args=(c,)) for c in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [run_id for ids in got.values() for run_id in ids]
    assert len(every) == len(set(every)) == 600, "each run claimed by exactly one node"
    assert sum(1 for ids in got.values() if ids) >= 2, "the claims were concurrent"
    for c in claimers:
        assert {run_id for run_id, _ in c.held()} == set(got[c.node])


def test_an_occurrence_buffered_by_a_node_that_is_gone_is_queued_again(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    """A buffered occurrence waits in its node's memory, with no lease: it names its node, and
    once that node is no longer a live member the leader queues it for any node."""
    a = node(runs_store, "a")
    a.join()
    a_runs = leased("a")
    leader = node(runs_store, "b", ttl_ms=60_000)
    leader.join()
    b_runs = leased("b")
    now = datetime.now(UTC)
    buffered = transition(
        new_run("job", at=now, nominal_time=now, origin=RunOrigin.SCHEDULE, state=RunState.PENDING),
        RunState.BUFFERED,
        at=now,
    )
    assert a_runs.insert_run(buffered)
    stored = runs_store.get_run(buffered.run_id)
    assert stored is not None and stored.node == "a" and a_runs.held() == [], "named, not leased"
    assert leader.rescue().requeued == [], "its node is live: it keeps it"
    rescued = wait_for(lambda: leader.rescue().requeued, timeout_s=5, what="a's membership to expire")
    assert rescued == [buffered.run_id]
    stored = runs_store.get_run(buffered.run_id)
    assert (
        stored is not None and stored.state is RunState.QUEUED and "which buffered it, is gone" in (stored.reason or "")
    )
    assert b_runs.claim(buffered.run_id) is not None
    assert a_runs.claim(buffered.run_id) is None, "the node that comes back late finds it taken"
    a.close()
    leader.close()


def test_a_nodes_run_updates_are_committed_together_without_deadlocking_its_renewals(
    runs_store: PostgresStore, leased: Callable[[str], LeasedRuns]
) -> None:
    """The history writer commits a node's run state changes several to a transaction; they lock
    their rows in run id order, as the heartbeat's renewal does, so the two never deadlock."""
    import threading

    import psycopg

    from supervise.supervisor.store.base import StoreError
    from supervise.supervisor.store.queued import QueuedStore

    a = node(runs_store, "a", ttl_ms=30_000)
    a.join()
    a_runs = leased("a", 30_000)
    runs = [_run() for _ in range(300)]
    for run in runs:
        assert a_runs.insert_run(run)
    with psycopg.connect(runs_store.dsn, autocommit=True) as conn:  # which transaction wrote each state
        conn.execute(f"CREATE TABLE {runs_store.schema}.written (run_id text, state text, tx bigint)")
        conn.execute(
            f"CREATE FUNCTION {runs_store.schema}.note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"INSERT INTO {runs_store.schema}.written VALUES (NEW.run_id, NEW.state, txid_current()); "
            "RETURN NEW; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER note AFTER UPDATE OF state ON {runs_store.schema}.runs "
            f"FOR EACH ROW EXECUTE FUNCTION {runs_store.schema}.note()"
        )
    beats: list[int] = []
    errors: list[StoreError] = []
    done = threading.Event()

    def renew() -> None:  # renewals all along, every lease, in the opposite order of the writes
        while not done.is_set():
            try:
                beat = a.beat(sorted(a_runs.held(), reverse=True), [])
            except StoreError as e:
                errors.append(e)
            else:
                beats.append(len(beat.runs))

    renewer = threading.Thread(target=renew)
    renewer.start()
    queued = QueuedStore(a_runs, shared=True)
    try:
        now = datetime.now(UTC)
        started = [transition(r, RunState.RUNNING, at=now) for r in runs]
        for run in reversed(started):
            queued.update_run(run)
        for run in started:
            with queued.together():  # as the scheduler writes a final state: a group of one here
                queued.update_run(transition(run, RunState.SUCCEEDED, at=datetime.now(UTC)))
        assert queued.wait_written(60), "every write went through"
    finally:
        done.set()
        renewer.join()
        queued.close()
    assert not errors, f"renewals failed: {errors[:3]}"
    assert len(beats) >= 2 and queued.failing_since is None
    assert {r.state for r in runs_store.list_runs("job", limit=1000)} == {RunState.SUCCEEDED}
    with psycopg.connect(runs_store.dsn) as conn:
        rows = conn.execute(f"SELECT count(*), count(DISTINCT tx) FROM {runs_store.schema}.written").fetchone()
    assert rows is not None
    changes, transactions = rows
    assert changes >= len(runs)  # every run's final state, and most of their `running`
    assert transactions <= changes / 8, f"{changes} state changes in {transactions} transactions"
    a.close()
