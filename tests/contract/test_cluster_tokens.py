"""The cluster's `tokens` table on a real PostgreSQL (supervisor/api/cluster_tokens.py, docs/api.md):
only the hash of a secret is stored, a token created through one store authenticates through
another, a revoke is seen by every reader within the copy's age, and a node's `api.db` tokens are
copied in by name, idempotently, the cluster's row winning a clash. Each test has its own schema."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from supervise.supervisor.api.cluster_tokens import ClusterTokens
from supervise.supervisor.api.open_store import open_api_store
from supervise.supervisor.api.store import ApiStore, Role
from supervise.supervisor.config.cluster import ClusterConfig


class Clock:
    """A monotonic clock the test moves by hand (the copy's age)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def node_store(pg_schema: tuple[str, str], tmp_path: Path, clock: Clock) -> Iterator[Callable[[str], ApiStore]]:
    """An API store of a node's own state dir whose tokens are the schema's table."""
    dsn, schema = pg_schema
    made: list[ApiStore] = []

    def make(name: str) -> ApiStore:
        store = ApiStore(tmp_path / name)
        store.share_tokens(ClusterTokens(dsn, schema=schema, node=name, clock=clock).open())
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def table_rows(dsn: str, schema: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            sql.SQL("SELECT id, name, hash, role, tenant, revoked_at FROM {}.tokens ORDER BY name").format(
                sql.Identifier(schema)
            )
        ).fetchall()


def test_a_token_made_through_one_node_authenticates_through_another_and_only_its_hash_is_stored(
    node_store: Callable[[str], ApiStore], pg_schema: tuple[str, str]
) -> None:
    a, b = node_store("a"), node_store("b")
    text, row = a.create_token("ci", Role.OPERATOR, "acme", timedelta(days=1))
    secret = text.rsplit("_", 1)[1]
    # Then: b knows it at once (an unknown id reads the table again), with its role and tenant
    seen = b.verify(text)
    assert seen is not None and (seen.name, seen.role, seen.tenant) == ("ci", Role.OPERATOR, "acme")
    assert b.verify(text[:-1] + ("A" if text[-1] != "A" else "B")) is None, "a wrong secret is refused"
    # And: the table has the hash, never the secret; api.db has no copy of the token
    rows = table_rows(*pg_schema)
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [(row.id, "ci", "operator", "acme")]
    assert secret not in repr(rows) and len(str(rows[0][2])) == 64
    assert a.local_token_rows() == [] and b.local_token_rows() == []
    # And: a name is the cluster's: b cannot make another "ci"
    with pytest.raises(ValueError, match='a token named "ci" exists'):
        b.create_token("ci", Role.VIEWER, None, None)
    assert [t.name for t in a.tokens()] == [t.name for t in b.tokens()] == ["ci"]
    # And: its use is recorded in the table, once a minute at most
    used = a.tokens()[0].last_used_at
    assert used is not None
    assert b.verify(text) is not None and a.verify(text) is not None
    assert a.tokens()[0].last_used_at == used


def test_a_revoke_through_one_node_is_refused_by_another_once_its_copy_is_a_second_old(
    node_store: Callable[[str], ApiStore], clock: Clock
) -> None:
    a, b = node_store("a"), node_store("b")
    text, _ = a.create_token("ci", Role.VIEWER, None, None)
    assert b.verify(text) is not None  # b's copy is read now
    assert a.revoke("ci") and not a.revoke("ci")
    assert a.verify(text) is None, "the node revoking sees it at once"
    clock.now += 0.5
    assert b.verify(text) is not None, "b's copy is half a second old: not read again"
    clock.now += 0.5
    assert b.verify(text) is None, "b's copy is a second old: read again, the token is refused"


def test_a_nodes_api_db_tokens_are_copied_in_once_and_a_clash_keeps_the_clusters(
    pg_schema: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn, schema = pg_schema
    cluster = ClusterConfig(store=f"{dsn}?schema={schema}", node="n")

    def local(folder: str, **tokens: Role) -> dict[str, str]:
        store = ApiStore(tmp_path / folder)
        try:
            return {name: store.create_token(name, role, None, None)[0] for name, role in tokens.items()}
        finally:
            store.close()

    a_texts = local("a", ops=Role.OPERATOR, old=Role.VIEWER)
    b_texts = local("b", ops=Role.ADMIN, own=Role.VIEWER)
    revoking = ApiStore(tmp_path / "a")
    revoking.revoke("old")
    revoking.close()

    a = open_api_store(tmp_path / "a", cluster, node="a")
    a.close()
    a = open_api_store(tmp_path / "a", cluster, node="a")  # again: nothing changes
    with caplog.at_level(logging.WARNING, logger="supervise.api"):
        b = open_api_store(tmp_path / "b", cluster, node="b")
    try:
        assert [(r[1], r[3]) for r in table_rows(dsn, schema)] == [
            ("old", "viewer"),
            ("ops", "operator"),
            ("own", "viewer"),
        ]
        assert table_rows(dsn, schema)[0][5] is not None, "a token revoked in api.db is revoked in the table"
        # The clash: b's "ops" is not the cluster's; the warning names it; the cluster's works on b
        assert any('token "ops"' in r.getMessage() for r in caplog.records)
        assert b.verify(b_texts["ops"]) is None
        seen = b.verify(a_texts["ops"])
        assert seen is not None and seen.role is Role.OPERATOR
        assert a.verify(b_texts["own"]) is not None
        assert a.verify(a_texts["old"]) is None
    finally:
        a.close()
        b.close()


def test_a_token_deleted_with_its_tenant_is_not_copied_in_again_from_another_nodes_api_db(
    pg_schema: tuple[str, str], tmp_path: Path
) -> None:
    dsn, schema = pg_schema
    cluster = ClusterConfig(store=f"{dsn}?schema={schema}", node="n")
    # Given: two nodes' api.db with the same acme token (one copied into the other before clustering)
    first = ApiStore(tmp_path / "a")
    text, _ = first.create_token("acme-bot", Role.OPERATOR, "acme", None)
    keep, _ = first.create_token("other", Role.VIEWER, None, None)
    rows = first.local_token_rows()
    first.close()
    second = ApiStore(tmp_path / "b")
    second.close()
    with sqlite3.connect(tmp_path / "b" / "api.db") as db:
        db.executemany(
            "INSERT INTO tokens (id, name, role, tenant, created_at, expires_at, revoked_at, last_used_at, hash)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
    a = open_api_store(tmp_path / "a", cluster, node="a")
    try:
        # When: acme is deleted through a's config, then b starts
        assert a.delete_tenant("acme")["tokens"] == 1
        b = open_api_store(tmp_path / "b", cluster, node="b")
        try:
            # Then: the deleted token is refused everywhere; the other token is the cluster's as before
            assert [t.name for t in b.tokens()] == ["other"]
            assert b.verify(text) is None and a.verify(text) is None
            assert b.verify(keep) is not None
            with psycopg.connect(dsn) as conn:
                kept = conn.execute(sql.SQL("SELECT * FROM {}.tokens_deleted").format(sql.Identifier(schema)))
                assert [len(r) for r in kept.fetchall()] == [2], "the id and the time alone"
        finally:
            b.close()
    finally:
        a.close()
