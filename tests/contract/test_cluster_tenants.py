"""Cluster mode's store per tenant on a real PostgreSQL: leases, renewal, rescue, status and claims
across the tenants' schemas, discovery of a schema another node made, a drop while another node
holds the schema open, and the move of rows an older version kept in the shared schema."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.cluster import ClusterStore
from supervise.supervisor.store.cluster_migration import move_cluster_tenant_rows
from supervise.supervisor.store.cluster_registrations import RegistrationStore
from supervise.supervisor.store.cluster_tenants import ClusterHistory, ClusterTenants
from supervise.supervisor.store.leased import LeasedRuns
from supervise.supervisor.store.postgres import PostgresStore
from tests.conftest import wait_for
from tests.contract.conftest import drop_schema

TTL_MS = 3000
OWNERS = {"acme-job": "acme", "globex-job": "globex"}


@pytest.fixture
def schema(pg_schema: tuple[str, str]) -> Iterator[tuple[str, str]]:
    dsn, name = pg_schema
    try:
        yield dsn, name
    finally:
        for tenant in ("acme", "globex"):
            drop_schema(dsn, f"{name}_tenant_{tenant}")


@pytest.fixture
def history(schema: tuple[str, str]) -> Iterator[Callable[..., tuple[ClusterHistory, ClusterStore]]]:
    """A node's run store and cluster tables, as the daemon builds them (closed after the test)."""
    dsn, name = schema
    made: list[tuple[ClusterHistory, ClusterStore]] = []

    def make(
        node: str, owners: dict[str, str] | None = None, ttl_ms: int = TTL_MS
    ) -> tuple[ClusterHistory, ClusterStore]:
        main = PostgresStore(dsn, schema=name).open()
        nodes = ClusterStore(dsn, schema=name, node=node, lease_ttl_ms=ttl_ms).open()
        runs = ClusterHistory(
            LeasedRuns(main, node=node, lease_ttl_ms=ttl_ms),
            ClusterTenants(dsn, name, node=node, lease_ttl_ms=ttl_ms),
            owners,
        ).open()
        nodes.runs_by_schema = runs.runs_by_schema
        nodes.join()
        made.append((runs, nodes))
        return runs, nodes

    yield make
    for runs, nodes in made:
        runs.close()
        nodes.close()


def services_in(dsn: str, schema: str) -> dict[str, str]:
    """run_id -> state of every run in `schema`."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.SQL("SELECT run_id, state FROM {}.runs").format(sql.Identifier(schema))).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def starting(service: str, minute: int = 0) -> Run:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    run = new_run(service, at=t0, nominal_time=t0 + timedelta(minutes=minute), origin=RunOrigin.SCHEDULE)
    return transition(run, RunState.STARTING, at=t0)


def test_a_tenants_run_is_leased_in_its_schema_renewed_counted_rescued_and_claimed_by_another_node(
    schema: tuple[str, str], history: Callable[..., tuple[ClusterHistory, ClusterStore]]
) -> None:
    dsn, name = schema
    a_runs, a = history("a", OWNERS)
    b_runs, b = history("b", OWNERS)
    acme, own = starting("acme-job"), starting("own-job")
    assert a_runs.insert_run(acme) and a_runs.insert_run(own)
    assert services_in(dsn, f"{name}_tenant_acme") == {acme.run_id: "starting"}
    assert services_in(dsn, name) == {own.run_id: "starting"}
    assert a_runs.epoch_of(acme.run_id) == 1
    assert a_runs.runs_by_schema(a_runs.held()) == {
        f"{name}_tenant_acme": [(acme.run_id, 1)],
        name: [(own.run_id, 1)],
    }
    # The heartbeat renews both leases, each in its schema; status counts both
    beat = a.beat(a_runs.held(), [])
    assert beat.runs == {acme.run_id, own.run_id}
    assert {n["name"]: n["runs"] for n in a.status()["nodes"]} == {"a": 2, "b": 0}
    # Node a stops renewing: once the lease expires the leader (b) queues the run again, in its schema

    def rescue() -> list[str] | None:
        assert b.beat([], []).leader  # b renews its own membership meanwhile, and leads
        return b.rescue().requeued or None

    rescued = wait_for(rescue, timeout_s=10, what="the expired leases rescued")
    assert set(rescued) == {acme.run_id, own.run_id}
    assert services_in(dsn, f"{name}_tenant_acme") == {acme.run_id: "queued"}
    # b claims the tenant's run from the tenant's schema; a's late write is fenced
    assert [r.run_id for r in b_runs.queued_runs("acme-job", 10)] == [acme.run_id]
    assert b_runs.claim(acme.run_id, service="acme-job") == 3
    assert b_runs.claim_many([own.run_id]) == {own.run_id: 3}  # found in its store without the service
    late = transition(
        transition(acme, RunState.RUNNING, at=acme.created_at, pid=1), RunState.SUCCEEDED, at=acme.created_at
    )
    assert not a_runs.update_run(late)
    assert a_runs.fenced_writes == 1
    assert b.beat(b_runs.held(), []).runs == {acme.run_id, own.run_id}
    assert not a.beat(a_runs.held(), []).runs  # a's leases are gone
    assert b_runs.worker_lease(acme.run_id) == {} and b_runs.revoke({acme.run_id}) == [acme.run_id]


def test_a_run_queued_in_any_schema_wakes_the_other_nodes_and_the_fencing_deadline_reaches_every_schema(
    history: Callable[..., tuple[ClusterHistory, ClusterStore]],
) -> None:
    runs, _ = history("a", OWNERS)
    woken: list[str] = []
    runs.on_claimable = woken.append
    runs.fence_until, runs.fence_grace_ms = 123.0, 50
    for service in ("acme-job", "globex-job", "own-job"):  # globex's store opens after the settings
        queued = transition(starting(service), RunState.QUEUED, at=datetime.now(UTC))
        assert runs.insert_run(queued)
    assert woken == ["acme-job", "globex-job", "own-job"]
    leased = starting("globex-job", 3)
    assert runs.insert_run(leased)
    assert runs.worker_lease(leased.run_id) == {"lease_until": 123.0, "lease_grace_ms": 50}


def test_a_schema_made_through_another_node_is_found_and_read(
    schema: tuple[str, str], history: Callable[..., tuple[ClusterHistory, ClusterStore]]
) -> None:
    a_runs, _ = history("a")
    b_runs, _ = history("b")
    a_runs.assign("globex-job", "globex")
    run = starting("globex-job")
    assert a_runs.insert_run(run)
    assert b_runs.get_run(run.run_id) is None  # b does not know the schema yet
    assert b_runs.discover() == ["globex"]
    found = b_runs.get_run(run.run_id)
    assert found is not None and (found.run_id, found.state, found.node) == (run.run_id, run.state, "a")
    assert b_runs.discover() == []


def test_a_tenant_dropped_through_one_node_is_skipped_by_another_that_held_it_open(
    schema: tuple[str, str], history: Callable[..., tuple[ClusterHistory, ClusterStore]]
) -> None:
    dsn, name = schema
    a_runs, _ = history("a", OWNERS)
    b_runs, b = history("b", OWNERS)
    held = starting("acme-job")
    assert b_runs.insert_run(held)
    kept = starting("globex-job")
    assert b_runs.insert_run(kept)
    assert a_runs.drop_tenant("acme")
    # b's next renewal finds the schema gone: the lease is not renewed (b stops the run)
    assert b.beat(b_runs.held(), []).runs == {kept.run_id}
    # b's first call that touches the schema fails once; after it, acme's schema is skipped
    with pytest.raises(StoreError):
        b_runs.list_runs()
    # the lease b held there is still offered to the heartbeat, which finds it gone, so the agent
    # revokes it (and stops the run)
    assert held.run_id in dict(b_runs.held())
    assert b.beat(b_runs.held(), []).runs == {kept.run_id}
    assert b_runs.revoke({held.run_id}) == [held.run_id]
    assert dict(b_runs.held()) == {kept.run_id: 1}
    assert [r.run_id for r in b_runs.list_runs()] == [kept.run_id]
    assert not b_runs.insert_run(starting("acme-job", 5))  # a write about its service changes nothing
    assert not b_runs.update_run(transition(held, RunState.RUNNING, at=held.created_at, pid=1))
    assert b_runs.tenants() == ["globex"]
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (f"{name}_tenant_acme",)
        )
        assert found.fetchone() is None, "nothing made the schema again"
    # the tenant assigned again (a service of a tenant of that name added anew): a new, empty schema
    b_runs.assign("acme-job", "acme")
    again = starting("acme-job", 7)
    assert b_runs.insert_run(again)
    assert services_in(dsn, f"{name}_tenant_acme") == {again.run_id: "starting"}


def test_rows_in_the_shared_schema_move_once_to_their_tenants_schemas_even_with_nodes_starting_together(
    schema: tuple[str, str], history: Callable[..., tuple[ClusterHistory, ClusterStore]]
) -> None:
    dsn, name = schema
    # Given: an older version's rows: acme's runs (one in flight under a live lease), and its registration
    with PostgresStore(dsn, schema=name) as shared:
        nodes = ClusterStore(dsn, schema=name, node="old", lease_ttl_ms=60_000).open()
        nodes.close()
        done = []
        for minute in range(5):
            run = starting("acme-job", minute)
            run = transition(
                transition(run, RunState.RUNNING, at=run.created_at, pid=1), RunState.SUCCEEDED, at=run.created_at
            )
            done.append(run)
        shared.insert_runs([*done, starting("own-job")])
        shared.put_registration("acme-job", {"command": ["true"], "manual": True})
        old = LeasedRuns(PostgresStore(dsn, schema=name), node="old", lease_ttl_ms=60_000).open()
        live = starting("acme-job", 9)
        assert old.insert_run(live)  # leased for a minute: it stays where its holder renews it
        old.close()
    rows = RegistrationStore(dsn, schema=name, node="new").open()
    # When: two nodes start at once, each opening acme's schema and moving its rows
    a_runs, _ = history("a")
    b_runs, _ = history("b")
    a_runs.assign("acme-job", "acme")
    b_runs.assign("acme-job", "acme")
    moved: list[dict[str, int]] = []
    threads = [
        threading.Thread(target=lambda: moved.append(move_cluster_tenant_rows(dsn, name, OWNERS))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then: each finished run moved once; the live one stayed; the registration now names the tenant
    assert sorted(moved, key=len) == [{}, {"acme": 5}]
    own = services_in(dsn, f"{name}_tenant_acme")
    assert set(own) == {r.run_id for r in done}
    shared_rows = services_in(dsn, name)
    assert live.run_id in shared_rows and not set(own) & set(shared_rows)
    assert rows.owners() == {"acme-job": "acme"}
    assert rows.read(["acme-job"])["acme-job"].tenant == "acme"
    assert [r.run_id for r in a_runs.list_runs("acme-job", limit=10)] == [r.run_id for r in reversed(done)]
    # And: run again, it moves nothing
    assert move_cluster_tenant_rows(dsn, name, OWNERS) == {}
    rows.close()


def test_removing_a_tenants_service_cancels_its_waiting_runs_in_the_tenants_schema(
    schema: tuple[str, str], history: Callable[..., tuple[ClusterHistory, ClusterStore]]
) -> None:
    dsn, name = schema
    runs, _ = history("a")
    runs.assign("acme-job", "acme")
    rows = RegistrationStore(dsn, schema=name, node="a").open()
    try:
        rows.add("acme-job", {"command": ["true"], "manual": True}, tenant="acme")
        assert rows.owners() == {"acme-job": "acme"} and rows.tenant_names("acme") == ["acme-job"]
        waiting = transition(starting("acme-job"), RunState.QUEUED, at=datetime.now(UTC))
        assert runs.insert_run(waiting)
        removal = rows.remove("acme-job")
        assert removal.existed and removal.cancelled == 1
        assert services_in(dsn, f"{name}_tenant_acme") == {waiting.run_id: "cancelled"}
        late = transition(starting("acme-job", 2), RunState.QUEUED, at=datetime.now(UTC))
        assert runs.insert_run(late)  # fired by a node that had not applied the removal yet
        assert rows.cancel_orphans("acme-job", "acme") == 1
        assert services_in(dsn, f"{name}_tenant_acme")[late.run_id] == "cancelled"
    finally:
        rows.close()


def test_a_schedule_batch_and_the_due_claims_of_a_tenants_one_shots_stay_in_its_schema(
    schema: tuple[str, str], history: Callable[..., tuple[ClusterHistory, ClusterStore]]
) -> None:
    dsn, name = schema
    a, _ = history("a", OWNERS)
    b, _ = history("b", OWNERS)
    now = datetime.now(UTC)

    def pending(service: str, seconds: int) -> Run:
        at = now - timedelta(seconds=seconds)
        return new_run(service, at=at, nominal_time=at, origin=RunOrigin.ONESHOT, state=RunState.PENDING)

    acme = [pending("acme-job", s) for s in (3, 2, 1)]
    shared = [pending("plain-job", 1)]
    assert a.insert_waiting(acme + shared) == {r.run_id for r in acme + shared}
    assert set(services_in(dsn, f"{name}_tenant_acme")) == {r.run_id for r in acme}
    assert set(services_in(dsn, name)) == {shared[0].run_id}
    assert a.insert_waiting(acme[:1]) == set(), "an occurrence inserted already is left out"

    b.discover()  # as a node's registration sync does
    assert b.due_services(now) == {"acme-job", "plain-job"}, "found in every schema, through any node"
    first = b.claim_due_oneshots("acme-job", now, 2)
    assert [r.run_id for r in first] == [r.run_id for r in acme[:2]], "soonest first, up to the limit"
    rest = a.claim_due_oneshots("acme-job", now, 5)
    assert [r.run_id for r in rest] == [acme[2].run_id], "the other node gets only what is left"
    states = services_in(dsn, f"{name}_tenant_acme")
    assert set(states.values()) == {"starting"}
    assert {run_id for run_id, _ in b.held()} >= {r.run_id for r in first}
    assert b.due_services(now) == {"plain-job"}
