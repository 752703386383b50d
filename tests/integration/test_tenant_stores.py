"""Each tenant's run history in a store of its own, with real daemons: SQLite files under
`tenants/`, PostgreSQL schemas, export, delete, restart, and the move of an older state directory."""

from __future__ import annotations

import json
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from supervise.supervisor.api.store import ApiStore, Role
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run, transition
from supervise.supervisor.store import Store
from supervise.supervisor.store.sqlite import SqliteStore
from tests.conftest import REPO, Daemon, start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import Answer, Receiver, call
from tests.integration.test_api import make_tokens
from tests.integration.test_api_tenants import cli

TOKENS = {
    "admin": (Role.ADMIN, None),
    "acme-operator": (Role.OPERATOR, "acme"),
    "globex-operator": (Role.OPERATOR, "globex"),
}


class TenantApi:
    """Calls to one daemon's API, as one of `tokens`."""

    def __init__(self, daemon: Daemon, tokens: dict[str, str]) -> None:
        self.base = "http://" + daemon.client.call("ping")["http"] + "/api/v1"
        self.state = daemon.config.parent / "state"
        self.tokens = tokens

    def __call__(self, method: str, path: str, who: str, **kwargs: Any) -> Answer:
        return call(method, self.base + path, token=self.tokens[who], **kwargs)


def task(api: TenantApi, who: str, url: str, at: datetime | None = None) -> tuple[str, str]:
    """Create a task; returns (task id, the id of its run), the run id as `api.db` records it."""
    body: dict[str, Any] = {"url": url} if at is None else {"url": url, "at": at.isoformat()}
    answer = api("POST", "/tasks", who, body=body)
    assert answer.status == 201, answer.json
    store = ApiStore(api.state)
    try:
        row = wait_for(lambda: store.task(answer.json["id"]), what="the task's row in api.db")
    finally:
        store.close()
    return answer.json["id"], row.oneshot_id


def succeeded(api: TenantApi, who: str, task_id: str, timeout_s: float = 60) -> None:
    wait_for(
        lambda: api("GET", f"/tasks/{task_id}", who).json["state"] == "succeeded",
        timeout_s=timeout_s,
        what=f"task {task_id} succeeded",
        interval_s=0.1,
    )


def api_daemon(folder: Path) -> tuple[Path, Path, dict[str, str], Daemon]:
    """A daemon with the API on loopback and the test's tokens: (config, state dir, tokens, daemon)."""
    config = write_config(folder, {}, http="127.0.0.1:0", allow_addresses=["127.0.0.1"])
    state = folder / "state"
    tokens = make_tokens(state, TOKENS)
    return config, state, tokens, start_daemon(config)


def runs_in(path: Path) -> dict[str, Run]:
    """Every run of a history file, by run id (the daemon is stopped, or writes through WAL)."""
    with SqliteStore(path) as store:
        return {r.run_id: r for r in store.list_runs(limit=100_000)}


def test_two_tenants_runs_land_in_their_own_files_and_their_waiting_tasks_run_after_a_restart(
    short_dir: Path, receiver: Receiver
) -> None:
    config, state, tokens, daemon = api_daemon(short_dir)
    try:
        api = TenantApi(daemon, tokens)
        # Given: each tenant (and the admin, of no tenant) has tasks that ran, and one waiting
        now_ids = {who: [task(api, who, receiver.url) for _ in range(2)] for who in TOKENS}
        later = datetime.now(UTC) + timedelta(seconds=20)
        later_ids = {who: task(api, who, receiver.url, at=later) for who in ("acme-operator", "globex-operator")}
        for who, created in now_ids.items():
            for task_id, _ in created:
                succeeded(api, who, task_id)
        # The admin, of no tenant, still sees every run through the API (merged across the stores)
        listed = {r["run_id"] for r in api("GET", "/runs?limit=100", "admin").json["runs"]}
        assert {run for created in now_ids.values() for _, run in created} <= listed
    finally:
        stop_daemon(daemon)

    # Then: each tenant's runs are in its own file, private, and nowhere else
    main = runs_in(state / "history.db")
    for tenant in ("acme", "globex"):
        path = state / "tenants" / tenant / "history.db"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        own = runs_in(path)
        who = f"{tenant}-operator"
        assert {r.service for r in own.values()} == {f"api-tasks-{tenant}-r0"}
        assert {run for _, run in now_ids[who]} | {later_ids[who][1]} == set(own)
        assert own[later_ids[who][1]].state is RunState.PENDING  # waits for its time, across the restart
        assert not set(own) & set(main)
        with SqliteStore(path) as store:
            assert list(store.list_registrations()) == [f"api-tasks-{tenant}-r0"]
    assert {r.service for r in main.values()} == {"api-tasks-r0"}
    assert {run for _, run in now_ids["admin"]} == set(main)

    # When: the daemon starts again, the waiting tasks of both tenants' stores run at their time
    again = start_daemon(config)
    try:
        api = TenantApi(again, tokens)
        for who, (task_id, _) in later_ids.items():
            succeeded(api, who, task_id, timeout_s=90)
    finally:
        stop_daemon(again)
    for tenant in ("acme", "globex"):
        run = runs_in(state / "tenants" / tenant / "history.db")[later_ids[f"{tenant}-operator"][1]]
        assert run.state is RunState.SUCCEEDED


def test_export_reads_the_tenants_own_file_and_delete_removes_it_leaving_the_other_tenant_intact(
    short_dir: Path, receiver: Receiver
) -> None:
    config, state, tokens, daemon = api_daemon(short_dir)
    try:
        api = TenantApi(daemon, tokens)
        acme = [task(api, "acme-operator", receiver.url) for _ in range(3)]
        globex = [task(api, "globex-operator", receiver.url) for _ in range(2)]
        for task_id, _ in acme:
            succeeded(api, "acme-operator", task_id)
        for task_id, _ in globex:
            succeeded(api, "globex-operator", task_id)

        # When: acme is exported, its runs are exactly those of its file
        exported = cli(config, "tenant", "export", "acme")
        assert exported.returncode == 0, exported.stderr
        doc = json.loads(exported.stdout)
        assert {r["run_id"] for r in doc["runs"]} == {run for _, run in acme}
        assert set(runs_in(state / "tenants" / "acme" / "history.db")) == {run for _, run in acme}
        assert not {run for _, run in globex} & {r["run_id"] for r in doc["runs"]}

        # When: acme is deleted while the daemon runs
        deleted = cli(config, "tenant", "delete", "acme", "--yes", "--json")
        assert deleted.returncode == 0, deleted.stderr
        counts = json.loads(deleted.stdout)
        assert counts["runs"] == 3 and counts["store_deleted"] is True
        # Then: its folder is gone; globex's file and runs are untouched, and globex goes on working
        assert not (state / "tenants" / "acme").exists()
        assert set(runs_in(state / "tenants" / "globex" / "history.db")) == {run for _, run in globex}
        more, more_run = task(api, "globex-operator", receiver.url)
        succeeded(api, "globex-operator", more)
        assert more_run in runs_in(state / "tenants" / "globex" / "history.db")

        # And: a tenant of that name made again starts with an empty store of its own
        fresh = make_tokens(state, {"acme-again": (Role.OPERATOR, "acme")})
        api = TenantApi(daemon, {**tokens, **fresh})
        new_id, new_run_id = task(api, "acme-again", receiver.url)
        succeeded(api, "acme-again", new_id)
        assert set(runs_in(state / "tenants" / "acme" / "history.db")) == {new_run_id}
    finally:
        stop_daemon(daemon)

    # When: globex is deleted while no daemon runs, its folder goes too
    deleted = cli(config, "tenant", "delete", "globex", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["runs"] == 3
    assert not (state / "tenants" / "globex").exists()
    assert (state / "tenants" / "acme" / "history.db").exists()


def _old_rows(store: Store, service: str, soon: datetime) -> tuple[list[Run], Run]:
    """Rows an older version kept in the shared store: two finished runs and a pending one-shot."""
    t0 = datetime.now(UTC) - timedelta(hours=1)
    done = []
    for minute in (1, 2):
        run = new_run(service, at=t0, nominal_time=t0 + timedelta(minutes=minute), origin=RunOrigin.SCHEDULE)
        run = transition(transition(run, RunState.STARTING, at=t0), RunState.RUNNING, at=t0, pid=1)
        done.append(transition(run, RunState.SUCCEEDED, at=t0, exit_code=0))
    waiting = new_run(service, at=t0, nominal_time=soon, origin=RunOrigin.ONESHOT, state=RunState.PENDING)
    store.insert_runs([*done, waiting])
    return done, waiting


def test_a_state_directory_with_tenant_rows_in_the_shared_file_is_moved_on_start_once(short_dir: Path) -> None:
    # Given: the layout of an older version: acme's job owned in api.db, its rows in history.db
    config = write_config(short_dir, {}, http="127.0.0.1:0")
    state = short_dir / "state"
    make_tokens(state, {"admin": (Role.ADMIN, None)})
    api_store = ApiStore(state)
    api_store.set_owner("acme-job", "acme")
    api_store.close()
    marker = short_dir / "ran.txt"
    spec = {"command": ["sh", "-c", f"echo ran >> {marker}"], "manual": True}
    soon = datetime.now(UTC) + timedelta(seconds=3)
    with SqliteStore(state / "history.db") as shared:
        shared.put_registration("acme-job", spec)
        shared.put_registration("own-job", spec)  # of no tenant: stays
        done, waiting = _old_rows(shared, "acme-job", soon)
        own_done, _ = _old_rows(shared, "own-job", datetime.now(UTC) + timedelta(days=1))

    # When: the daemon starts
    daemon = start_daemon(config)
    try:
        # Then: the moved one-shot still runs at its time, from the tenant's store
        wait_for(lambda: marker.exists(), timeout_s=60, what="the moved one-shot ran")
        wait_for(
            lambda: daemon.client.call("runs", name="acme-job")["runs"][0]["state"] == "succeeded",
            timeout_s=30,
            what="its run recorded",
        )
    finally:
        stop_daemon(daemon)
    own = runs_in(state / "tenants" / "acme" / "history.db")
    assert set(own) == {r.run_id for r in done} | {waiting.run_id}
    assert own[waiting.run_id].state is RunState.SUCCEEDED
    main = runs_in(state / "history.db")
    assert {r.service for r in main.values()} == {"own-job"}
    assert {r.run_id for r in own_done} <= set(main)

    # When: it starts again, nothing is moved twice and nothing is lost
    stop_daemon(start_daemon(config))
    assert runs_in(state / "tenants" / "acme" / "history.db") == own
    assert set(runs_in(state / "history.db")) == set(main)


def test_postgresql_keeps_each_tenant_in_a_schema_of_its_own(short_dir: Path, receiver: Receiver) -> None:
    import psycopg
    from psycopg import sql

    from tests.contract.conftest import drop_schema, postgres_dsn

    dsn = postgres_dsn()
    schema = f"sv_tstore_{uuid.uuid4().hex[:10]}"
    schemas = [schema, f"{schema}_tenant_acme", f"{schema}_tenant_globex"]

    def services_in(name: str) -> dict[str, str]:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(sql.SQL("SELECT run_id, service FROM {}.runs").format(sql.Identifier(name)))
            return {str(r[0]): str(r[1]) for r in rows.fetchall()}

    def exists(name: str) -> bool:
        with psycopg.connect(dsn) as conn:
            found = conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (name,))
            return found.fetchone() is not None

    try:
        config = write_config(
            short_dir, {}, http="127.0.0.1:0", allow_addresses=["127.0.0.1"], store=f"{dsn}?schema={schema}"
        )
        tokens = make_tokens(short_dir / "state", TOKENS)
        daemon = start_daemon(config)
        try:
            api = TenantApi(daemon, tokens)
            created = {who: task(api, who, receiver.url) for who in TOKENS}
            for who, (task_id, _) in created.items():
                succeeded(api, who, task_id)
            # Then: each tenant's run is in its schema, the admin's in the main one
            assert services_in(f"{schema}_tenant_acme") == {created["acme-operator"][1]: "api-tasks-acme-r0"}
            assert services_in(f"{schema}_tenant_globex") == {created["globex-operator"][1]: "api-tasks-globex-r0"}
            assert services_in(schema) == {created["admin"][1]: "api-tasks-r0"}
            # When: acme is exported and deleted
            doc = json.loads(cli(config, "tenant", "export", "acme").stdout)
            assert [r["run_id"] for r in doc["runs"]] == [created["acme-operator"][1]]
            deleted = cli(config, "tenant", "delete", "acme", "--yes", "--json")
            assert deleted.returncode == 0, deleted.stderr
            assert json.loads(deleted.stdout)["store_deleted"] is True
            # Then: its schema is dropped, globex's is intact
            assert not exists(f"{schema}_tenant_acme")
            assert services_in(f"{schema}_tenant_globex") == {created["globex-operator"][1]: "api-tasks-globex-r0"}
            assert api("GET", f"/tasks/{created['globex-operator'][0]}", "globex-operator").json["state"] == (
                "succeeded"
            )
        finally:
            stop_daemon(daemon)
    finally:
        for name in schemas:
            drop_schema(dsn, name)


def test_a_name_a_tenant_gave_up_keeps_its_old_runs_with_the_tenant_and_its_new_ones_elsewhere(short_dir: Path) -> None:
    config = write_config(short_dir, {}, http="127.0.0.1:0")
    state = short_dir / "state"
    tokens = make_tokens(state, {"acme-admin": (Role.ADMIN, "acme")})
    spec = {
        "target": "tests.children.jobs@settle-merchants",
        "manual": True,
        "args": {"merchant": "M1"},
        "env": {"RUNS_FILE": str(short_dir / "runs.txt"), "PYTHONPATH": str(REPO)},
    }
    daemon = start_daemon(config)
    try:
        api = TenantApi(daemon, tokens)

        def succeeded(run_id: str) -> None:
            wait_for(
                lambda: (
                    daemon.client.call("runs", name="settle")["runs"][0]["run_id"] == run_id
                    and daemon.client.call("runs", name="settle")["runs"][0]["state"] == "succeeded"
                ),
                timeout_s=30,
                what=f"run {run_id}",
            )

        # Given: acme's job ran, and acme deleted it
        assert api("POST", "/jobs", "acme-admin", body={"name": "settle", **spec}).status == 201
        acme_run = api("POST", "/jobs/settle/run", "acme-admin", body={}).json["run_id"]
        succeeded(acme_run)
        assert api("DELETE", "/jobs/settle", "acme-admin").status == 200
        # When: a service of that name is added through the control socket, of no tenant, and runs
        daemon.client.call("add", name="settle", spec=spec)
        own_run = daemon.client.call("run", name="settle")["run_id"]
        succeeded(own_run)
    finally:
        stop_daemon(daemon)
    # Then: each run is in its owner's store, and acme's export has its own (its job deleted since)
    assert set(runs_in(state / "tenants" / "acme" / "history.db")) == {acme_run}
    assert set(runs_in(state / "history.db")) == {own_run}
    exported = cli(config, "tenant", "export", "acme")
    assert exported.returncode == 0, exported.stderr
    assert [r["run_id"] for r in json.loads(exported.stdout)["runs"]] == [acme_run]
