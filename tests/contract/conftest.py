"""The `store` fixture: every contract test runs against SQLite and PostgreSQL.

PostgreSQL comes from SUPERVISE_TEST_PG_DSN, else postgresql://postgres@127.0.0.1:5432/test
(then user root). Each test gets its own schema, dropped afterwards. Without a
reachable server the postgres cases skip locally and fail on CI (STYLE rule 18).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervise.supervisor.store.base import Store
from supervise.supervisor.store.postgres import PostgresStore
from supervise.supervisor.store.sqlite import SqliteStore

_DEFAULT_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
_dsn_cache: dict[str, str | None] = {}


def _reachable_dsn() -> str | None:
    if "dsn" not in _dsn_cache:
        import psycopg

        env = os.environ.get("SUPERVISE_TEST_PG_DSN")
        candidates = (env,) if env else _DEFAULT_DSNS
        _dsn_cache["dsn"] = None
        _dsn_cache["error"] = None
        for dsn in candidates:
            try:
                with psycopg.connect(dsn, connect_timeout=3):
                    _dsn_cache["dsn"] = dsn
                    break
            except psycopg.Error as exc:
                _dsn_cache["error"] = f"{dsn}: {exc}".strip()
    return _dsn_cache["dsn"]


def postgres_dsn() -> str:
    """A DSN for a reachable server, or skip (fail when $CI is set)."""
    dsn = _reachable_dsn()
    if dsn is None:
        why = f"PostgreSQL unreachable ({_dsn_cache.get('error')}); set SUPERVISE_TEST_PG_DSN"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return dsn


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(dsn, schema): a fresh, unique schema name, dropped after the test."""
    dsn = postgres_dsn()
    schema = f"supervise_test_{uuid.uuid4().hex[:12]}"
    try:
        yield dsn, schema
    finally:
        drop_schema(dsn, schema)


ROUTED_OWNERS = {"a": "acme", "hook": "acme", "acme-report": "acme", "web": "beta"}
"""Services the routed variants keep in tenants' stores; the others ("report", "b", ...) stay in the main one."""


@pytest.fixture(params=["sqlite", "postgres", "routed-sqlite", "routed-postgres", "routed-cluster"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """How to open the store under test, in a form a subprocess can use too.

    The routed variants are a `RoutedStore` over a main store and two tenants' stores
    (files under tmp_path/tenants, or schemas <schema>_tenant_acme and _beta); routed-cluster is
    the cluster mode's (`ClusterHistory`: each schema's store a `LeasedRuns` of one node)."""
    if request.param in ("sqlite", "routed-sqlite"):
        yield {"kind": request.param, "path": str(tmp_path / "history.db")}
        return
    dsn = postgres_dsn()
    schema = f"supervise_test_{uuid.uuid4().hex[:12]}"
    try:
        yield {"kind": request.param, "dsn": dsn, "schema": schema}
    finally:
        for tenant in ("", "_tenant_acme", "_tenant_beta"):
            drop_schema(dsn, schema + tenant)


def make_store(spec: dict[str, str]) -> Store:
    if spec["kind"] == "routed-cluster":
        from supervise.supervisor.store.cluster import ClusterStore
        from supervise.supervisor.store.cluster_tenants import ClusterHistory, ClusterTenants
        from supervise.supervisor.store.leased import LeasedRuns

        main = make_store({**spec, "kind": "postgres"})
        assert isinstance(main, PostgresStore)
        with main:  # the cluster's columns on the main schema's runs, as a node joining makes them
            nodes = ClusterStore(spec["dsn"], schema=spec["schema"], node="contract", lease_ttl_ms=60_000)
            nodes.open()
            nodes.close()
        places = ClusterTenants(spec["dsn"], spec["schema"], node="contract", lease_ttl_ms=60_000)
        return ClusterHistory(LeasedRuns(main, node="contract", lease_ttl_ms=60_000), places, ROUTED_OWNERS)
    if spec["kind"].startswith("routed-"):
        from supervise.supervisor.store.routed import RoutedStore
        from supervise.supervisor.store.tenants import PostgresTenants, SqliteTenants

        main = make_store({**spec, "kind": spec["kind"].removeprefix("routed-")})
        if spec["kind"] == "routed-sqlite":
            return RoutedStore(main, SqliteTenants(Path(spec["path"]).parent / "tenants"), ROUTED_OWNERS)
        return RoutedStore(main, PostgresTenants(spec["dsn"], spec["schema"]), ROUTED_OWNERS)
    if spec["kind"] == "sqlite":
        return SqliteStore(spec["path"])
    return PostgresStore(spec["dsn"], schema=spec["schema"], reconnect_delay_ms=20)


@pytest.fixture
def store(store_spec: dict[str, str]) -> Iterator[Store]:
    with make_store(store_spec) as opened:
        yield opened
