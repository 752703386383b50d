"""A cluster node's connection whose transaction sits idle (the node frozen between two of its
statements) is ended by the server after half a lease, and its row locks with it."""

from __future__ import annotations

import time

import psycopg
import pytest

from supervise.supervisor.store.postgres import idle_transaction_limit, with_options


def test_a_transaction_left_idle_past_half_a_lease_is_ended_and_frees_its_locks(pg_schema: tuple[str, str]) -> None:
    dsn, _ = pg_schema
    table = f"idle_{int(time.time() * 1000)}"
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        other.execute(f"INSERT INTO {table} VALUES (1, 0)")
        try:
            node = psycopg.connect(with_options(dsn, idle_transaction_limit(1000)))  # as a node with lease_ttl 1 s
            node.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")  # a row lock, then nothing: "frozen"
            started = time.monotonic()
            other.execute("SET lock_timeout = '5s'")
            other.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")  # waits for the lock until the server ends it
            waited = time.monotonic() - started
            assert 0.3 < waited < 3.0, waited
            with pytest.raises(psycopg.Error):
                node.execute("SELECT 1")  # its session is gone
            node.close()
            assert other.execute(f"SELECT v FROM {table}").fetchone() == (2,)
        finally:
            other.execute(f"DROP TABLE {table}")


def test_session_options_are_added_to_those_the_dsn_has() -> None:
    dsn = with_options("postgresql://127.0.0.1/test?options=-c%20search_path%3Dx", idle_transaction_limit(15_000))
    assert "search_path=x" in dsn and "idle_in_transaction_session_timeout=7500" in dsn
    assert with_options("postgresql://127.0.0.1/test", None) == "postgresql://127.0.0.1/test"
