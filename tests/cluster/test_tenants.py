"""Tenants of the HTTP API in cluster mode, with real daemons on one PostgreSQL (docs/api.md, docs/cluster.md):
each tenant's runs in its own schema whichever node runs them, its jobs seen through any node by its
tokens only, a run of a SIGKILLed node rescued from the tenant's schema, export and delete with two
nodes running, an older cluster database's rows moved to the tenants' schemas at start, and the tokens
the cluster's: created, listed and revoked with the CLI against one node, seen by every node."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from supervise.supervisor.api.store import ApiStore, Role
from supervise.supervisor.core.runs import RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.cluster import ClusterStore
from supervise.supervisor.store.postgres import PostgresStore
from tests.cluster.conftest import ClusterDb, Sink, cluster_status, write_cluster_config
from tests.conftest import REPO, Daemon, wait_for
from tests.contract.conftest import drop_schema
from tests.integration.api_helpers import Answer, call
from tests.integration.test_api import make_tokens
from tests.integration.test_api_tenants import cli

TOKENS = {
    "admin": (Role.ADMIN, None),
    "acme": (Role.ADMIN, "acme"),
    "globex": (Role.ADMIN, "globex"),
}


class Node:
    """One daemon of the cluster and its API, with the cluster's tokens."""

    def __init__(self, daemon: Daemon, tokens: dict[str, str], name: str) -> None:
        self.daemon = daemon
        self.tokens = tokens
        self.name = name
        self.base = "http://" + daemon.client.call("ping")["http"] + "/api/v1"

    def __call__(self, method: str, path: str, who: str, **kwargs: Any) -> Answer:
        return call(method, self.base + path, token=self.tokens[who], **kwargs)


@pytest.fixture
def tenant_db(cluster_db: ClusterDb) -> Iterator[ClusterDb]:
    try:
        yield cluster_db
    finally:
        for tenant in ("acme", "globex"):
            drop_schema(cluster_db.dsn, f"{cluster_db.schema}_tenant_{tenant}")


@pytest.fixture
def start_node(short_dir: Path, launch: Callable[[Path], Daemon]) -> Callable[..., Node]:
    """A node with its own state dir and the API on loopback. The first node of a database has the three
    tokens in its api.db (copied into the cluster's table as it starts); the others use the same ones."""
    numbers = iter(range(100))
    made: dict[str, dict[str, str]] = {}

    def make(db: ClusterDb, name: str, *, before: Callable[[Path], None] | None = None, **options: object) -> Node:
        folder = short_dir / f"n{next(numbers)}"
        config = write_cluster_config(
            folder, db, {}, node=name, http="127.0.0.1:0", allow_addresses=["127.0.0.1"], **options
        )
        if db.url not in made:
            made[db.url] = make_tokens(folder / "state", TOKENS)
        tokens = made[db.url]
        if before is not None:
            before(folder / "state")
        return Node(launch(config), tokens, name)

    return make


def runs_in(db: ClusterDb, schema: str) -> dict[str, dict[str, Any]]:
    """run_id -> the row's service, state, node and reason, in `schema` (none when it does not exist)."""
    with psycopg.connect(db.dsn) as conn:
        here = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".runs',)).fetchone()
        if here is None or here[0] is None:
            return {}
        rows = conn.execute(
            sql.SQL("SELECT run_id, service, state, node, reason FROM {}.runs").format(sql.Identifier(schema))
        ).fetchall()
    return {str(r[0]): {"service": r[1], "state": r[2], "node": r[3], "reason": r[4]} for r in rows}


def job(name: str, folder: Path) -> dict[str, Any]:
    return {
        "name": name,
        "target": "tests.children.jobs@settle-merchants",
        "manual": True,
        "args": {"merchant": name},
        "env": {"RUNS_FILE": str(folder / f"{name}.txt"), "PYTHONPATH": str(REPO)},
    }


def run_through(node: Node, who: str, name: str) -> str:
    answer = node("POST", f"/jobs/{name}/run", who, body={})
    assert answer.status == 202, answer.json
    run_id = str(answer.json["run_id"])
    wait_for(
        lambda: node("GET", f"/runs/{run_id}", who).json.get("state") == "succeeded",
        timeout_s=60,
        what=f"run {run_id} of {name} through {node.name}",
    )
    return run_id


def has_job(node: Node, name: str) -> bool:
    return node("GET", f"/jobs/{name}", "admin").status == 200


def test_each_tenants_runs_land_in_its_schema_through_either_node_and_only_its_tokens_see_its_job(
    tenant_db: ClusterDb, start_node: Callable[..., Node], short_dir: Path
) -> None:
    a = start_node(tenant_db, "alpha")
    b = start_node(tenant_db, "beta")
    # Given: acme's job added through alpha, globex's through beta
    assert a("POST", "/jobs", "acme", body=job("acme-report", short_dir)).status == 201
    assert b("POST", "/jobs", "globex", body=job("globex-report", short_dir)).status == 201
    for node in (a, b):
        for name in ("acme-report", "globex-report"):
            wait_for(lambda node=node, name=name: has_job(node, name), timeout_s=30, what=f"{name} on {node.name}")

    # Then: through either node, a tenant's tokens see its own job and not the other's (404)
    for node in (a, b):
        assert node("GET", "/jobs/acme-report", "acme").json["tenant"] == "acme"
        assert node("GET", "/jobs/acme-report", "globex").status == 404
        assert node("GET", "/jobs/globex-report", "acme").status == 404
        assert [j["name"] for j in node("GET", "/jobs", "globex").json["jobs"]] == ["globex-report"]
        assert {j["name"] for j in node("GET", "/jobs", "admin").json["jobs"]} >= {"acme-report", "globex-report"}

    # When: each tenant runs its job through the node it was not added through
    acme_run = run_through(b, "acme", "acme-report")
    globex_run = run_through(a, "globex", "globex-report")

    # Then: each run is in its tenant's schema, run by the node asked; none is in the shared schema
    acme_rows = runs_in(tenant_db, f"{tenant_db.schema}_tenant_acme")
    globex_rows = runs_in(tenant_db, f"{tenant_db.schema}_tenant_globex")
    assert acme_rows[acme_run]["node"] == "beta" and acme_rows[acme_run]["state"] == "succeeded"
    assert globex_rows[globex_run]["node"] == "alpha" and globex_rows[globex_run]["state"] == "succeeded"
    assert {r["service"] for r in acme_rows.values()} == {"acme-report"}
    assert {r["service"] for r in globex_rows.values()} == {"globex-report"}
    shared = runs_in(tenant_db, tenant_db.schema)
    assert not {acme_run, globex_run} & set(shared)
    # And: each tenant lists its own runs through either node, the admin all of them
    for node in (a, b):
        assert [r["run_id"] for r in node("GET", "/runs", "acme").json["runs"]] == [acme_run]
        assert node("GET", f"/runs/{globex_run}", "acme").status == 404
        assert {acme_run, globex_run} <= {r["run_id"] for r in node("GET", "/runs", "admin").json["runs"]}


def test_a_tenants_run_on_a_sigkilled_node_is_rescued_from_the_tenants_schema(
    tenant_db: ClusterDb, start_node: Callable[..., Node], sink: Sink
) -> None:
    sink.delay_s = 60  # the call stays in flight until the node is killed
    a = start_node(tenant_db, "alpha", lease_ttl="3s", renew_every="1s")
    b = start_node(tenant_db, "beta", lease_ttl="3s", renew_every="1s")
    own = f"{tenant_db.schema}_tenant_acme"
    # Given: a task of acme's, created through alpha, running on one of the nodes
    created = a("POST", "/tasks", "acme", body={"url": sink.url + "/acme"})
    assert created.status == 201, created.json
    wait_for(lambda: sink.keys("/acme"), timeout_s=30, what="the task's call to reach the sink")
    [(run_id, row)] = wait_for(
        lambda: [(k, v) for k, v in runs_in(tenant_db, own).items() if v["state"] == "running"] or None,
        timeout_s=30,
        what="the task's run recorded running in acme's schema",
    )
    assert row["service"] == "api-tasks-acme-r0"
    holder, other = (a, b) if row["node"] == "alpha" else (b, a)
    counted = {n["name"]: n["runs"] for n in cluster_status(tenant_db)["nodes"]}
    assert counted[row["node"]] == 1, "cluster status counts the run the tenant's schema holds"

    # When: the node running it is SIGKILLed
    holder.daemon.proc.kill()
    holder.daemon.proc.wait()

    # Then: the other node, leader once the dead one's lease expires, rescues the run in acme's schema
    def rescued() -> dict[str, Any] | None:
        found = runs_in(tenant_db, own)[run_id]
        return found if found["state"] != "running" else None

    found = wait_for(rescued, timeout_s=30, what="the run rescued from acme's schema")
    assert found["state"] == "lost"
    assert found["reason"] == f"the lease of node {row['node']} expired while it ran"
    assert run_id not in runs_in(tenant_db, tenant_db.schema)
    assert other("GET", f"/runs/{run_id}", "acme").json["state"] == "lost"
    assert other("GET", f"/runs/{run_id}", "globex").status == 404


def test_export_and_delete_of_a_tenant_with_two_nodes_running(
    tenant_db: ClusterDb, start_node: Callable[..., Node], short_dir: Path
) -> None:
    a = start_node(tenant_db, "alpha")
    b = start_node(tenant_db, "beta")
    assert a("POST", "/jobs", "acme", body=job("acme-report", short_dir)).status == 201
    assert a("POST", "/jobs", "globex", body=job("globex-report", short_dir)).status == 201
    wait_for(lambda: has_job(b, "acme-report") and has_job(b, "globex-report"), timeout_s=30, what="jobs on beta")
    acme_runs = {run_through(b, "acme", "acme-report"), run_through(a, "acme", "acme-report")}
    globex_run = run_through(b, "globex", "globex-report")
    config = a.daemon.config

    # When: acme is exported through alpha's config: every run of its schema, whichever node ran it
    exported = cli(config, "tenant", "export", "acme")
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert {r["run_id"] for r in doc["runs"]} == acme_runs
    assert [s["name"] for s in doc["services"]] == ["acme-report"]

    # When: acme is deleted through alpha while beta runs and holds acme's schema open
    deleted = cli(config, "tenant", "delete", "acme", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    counts = json.loads(deleted.stdout)
    assert counts["runs"] == 2 and counts["store_deleted"] is True and counts["services"] == 1
    assert counts["tokens"] == 1, "acme's token, deleted from the cluster's table"
    # Then: acme's token is refused by both nodes (within their copies' age)
    wait_for(
        lambda: all(n("GET", "/jobs", "acme").status == 401 for n in (a, b)), timeout_s=3, what="acme's token refused"
    )
    # Then: the schema is gone, its job is gone from both nodes, and beta goes on with globex
    assert runs_in(tenant_db, f"{tenant_db.schema}_tenant_acme") == {}
    wait_for(lambda: not has_job(b, "acme-report"), timeout_s=30, what="acme-report removed on beta")
    again = run_through(b, "globex", "globex-report")
    assert set(runs_in(tenant_db, f"{tenant_db.schema}_tenant_globex")) == {globex_run, again}
    assert b("GET", "/runs", "admin").status == 200
    assert runs_in(tenant_db, f"{tenant_db.schema}_tenant_acme") == {}, "no node made the schema again"


def test_an_older_cluster_databases_tenant_rows_move_to_the_tenants_schema_once(
    tenant_db: ClusterDb, start_node: Callable[..., Node]
) -> None:
    # Given: the rows of acme's job in the shared schema, its tenant recorded in alpha's api.db only
    t0 = datetime.now(UTC) - timedelta(hours=1)
    with PostgresStore(tenant_db.dsn, schema=tenant_db.schema) as shared:
        ClusterStore(tenant_db.dsn, schema=tenant_db.schema, node="old", lease_ttl_ms=5000).open().close()
        done = []
        for minute in range(3):
            run = new_run("acme-job", at=t0, nominal_time=t0 + timedelta(minutes=minute), origin=RunOrigin.SCHEDULE)
            run = transition(transition(run, RunState.STARTING, at=t0), RunState.RUNNING, at=t0, pid=1)
            done.append(transition(run, RunState.SUCCEEDED, at=t0, exit_code=0))
        shared.insert_runs(done)
        shared.put_registration("acme-job", {"command": ["true"], "manual": True})

    def owned(state: Path) -> None:
        store = ApiStore(state)
        store.set_owner("acme-job", "acme")
        store.close()

    # When: two nodes start (only alpha knows the owner)
    a = start_node(tenant_db, "alpha", before=owned)
    b = start_node(tenant_db, "beta")
    # Then: the runs are in acme's schema, once, and both nodes show the job to acme only
    assert set(runs_in(tenant_db, f"{tenant_db.schema}_tenant_acme")) == {r.run_id for r in done}
    assert not {r.run_id for r in done} & set(runs_in(tenant_db, tenant_db.schema))
    for node in (a, b):
        wait_for(
            lambda node=node: node("GET", "/jobs/acme-job", "acme").status == 200,
            timeout_s=30,
            what=f"acme-job acme's on {node.name}",
        )
        assert node("GET", "/jobs/acme-job", "globex").status == 404
        assert {r["run_id"] for r in node("GET", "/runs?job=acme-job", "acme").json["runs"]} == {r.run_id for r in done}
    # And: another node starting with the same knowledge moves nothing twice
    start_node(tenant_db, "gamma", before=owned)
    assert set(runs_in(tenant_db, f"{tenant_db.schema}_tenant_acme")) == {r.run_id for r in done}


def test_a_token_made_with_the_cli_against_one_node_is_the_clusters_until_revoked_through_the_other(
    tenant_db: ClusterDb, start_node: Callable[..., Node]
) -> None:
    own: dict[str, str] = {}

    def clashing(state: Path) -> None:  # gamma's api.db has an "acme" token of its own
        own.update(make_tokens(state, {"acme": (Role.ADMIN, "acme")}))

    a = start_node(tenant_db, "alpha")
    b = start_node(tenant_db, "beta")
    # When: a token is created with the CLI against alpha's config, while both nodes run
    made = cli(a.daemon.config, "token", "create", "ci", "--role", "viewer", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip()
    secret = text.rsplit("_", 1)[1]

    # Then: it authenticates on both nodes (a token unknown to a node makes it read the table again)
    for node in (b, a):
        answer = call("GET", node.base + "/jobs", token=text)
        assert answer.status == 200, answer.text
        assert node("GET", "/jobs", "acme").status == 200, "api.db tokens of the first node are the cluster's"

    # And: listed once through either node's config, with no secret and no hash
    for config in (a.daemon.config, b.daemon.config):
        listed = cli(config, "token", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["name"] for r in rows].count("ci") == 1
        assert secret not in listed.stdout and "hash" not in listed.stdout
        assert next(r for r in rows if r["name"] == "ci")["tenant"] == "acme"

    # When: revoked with the CLI against beta's config
    revoked = cli(b.daemon.config, "token", "revoke", "ci")
    assert revoked.returncode == 0, revoked.stderr
    # Then: both nodes refuse it (401) within their copies' age (1 s), and go on refusing it
    wait_for(
        lambda: all(call("GET", n.base + "/jobs", token=text).status == 401 for n in (a, b)),
        timeout_s=3,
        what="the revoked token refused by both nodes",
    )
    for node in (a, b):
        answer = call("GET", node.base + "/jobs", token=text)
        assert answer.status == 401 and "WWW-Authenticate" in answer.headers
    assert cli(a.daemon.config, "token", "revoke", "ci").returncode != 0, "nothing left to revoke"

    # When: a third node starts whose api.db has another "acme" token
    c = start_node(tenant_db, "gamma", before=clashing)
    # Then: the cluster's is kept and works there; gamma's own is refused; the log names the token
    assert c("GET", "/jobs", "acme").status == 200
    assert call("GET", c.base + "/jobs", token=own["acme"]).status == 401
    assert 'token "acme"' in c.daemon.log()
