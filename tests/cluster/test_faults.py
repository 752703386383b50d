"""Database faults, on a PostgreSQL server of the test's own (docs/cluster.md "Faults").

- unreachable for longer than lease_ttl: singletons stop everywhere (no two copies, ever),
  local services go on; when it returns a node takes the singleton again.
- restarted under load: nodes reconnect; no occurrence is lost or run twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil

from tests.cluster.conftest import ClusterDb, OwnPostgres, Sink, query
from tests.cluster.test_singletons import events, singleton
from tests.conftest import Daemon, wait_for


def own_db(server: OwnPostgres) -> ClusterDb:
    return ClusterDb(server.dsn, f"supervise_cl_{uuid.uuid4().hex[:12]}")


def test_database_unreachable_longer_than_the_lease_stops_singletons_until_it_returns(
    nodes: Callable[..., Daemon], own_postgres: OwnPostgres, short_dir: Path
) -> None:
    db = own_db(own_postgres)
    table = {**singleton(short_dir), "local": {"command": ["sleep", "300"]}}
    daemons = [nodes(db, table, node=f"n{i}") for i in range(2)]
    log = short_dir / "events"
    wait_for(lambda: events(log), timeout_s=15, what="the singleton to start")
    holder = wait_for(
        lambda: next((d for d in daemons if d.state("single") == "RUNNING"), None), what="the holder RUNNING"
    )
    copy = holder.service("single")["pid"]
    local = {d.pid: d.wait_running_pid("local") for d in daemons}
    own_postgres.stop()
    cut = time.monotonic()
    wait_for(lambda: not psutil.pid_exists(copy), timeout_s=5, what="the holder to fence its copy")
    assert time.monotonic() - cut < 2.0, "fenced before its lease could have expired"
    time.sleep(1.5)  # the database stays away for longer than lease_ttl
    for d in daemons:
        assert d.state("single") != "RUNNING", "no copy runs while the database is away"
        assert d.service("local")["pid"] == local[d.pid], "local services go on"
    own_postgres.start()
    wait_for(lambda: len(events(log)) >= 2, timeout_s=20, what="the singleton to come back")
    assert [kind for kind, _, _ in events(log)] == ["start", "start"]


def test_postgresql_restarted_under_load_loses_and_repeats_nothing(
    nodes: Callable[..., Daemon], own_postgres: OwnPostgres, sink: Sink
) -> None:
    db = own_db(own_postgres)
    http = {"action": "http", "method": "POST", "body": "{}"}
    table = {f"tick{i}": {**http, "url": f"{sink.url}/tick{i}", "every": "1s"} for i in range(2)}
    daemons = [
        nodes(db, table, node=f"n{i}", allow_addresses=["127.0.0.1"], lease_ttl="6s", renew_every="1s")
        for i in range(2)
    ]
    started = datetime.now(UTC)
    wait_for(lambda: len(sink.keys()) >= 4, timeout_s=20, what="runs before the restart")
    own_postgres.stop("fast")
    time.sleep(1.0)
    own_postgres.start()
    restarted = time.monotonic()
    wait_for(lambda: time.monotonic() - restarted > 4, timeout_s=10, what="runs after the restart")
    for d in daemons:
        for i in range(2):
            d.client.call("pause", name=f"tick{i}")
    ended = datetime.now(UTC)
    for i in range(2):

        def settled(i: int = i) -> list[dict[str, object]] | None:
            rows = query(
                db,
                "SELECT nominal_time, state, key, run_id, reason FROM {s}.runs WHERE service = %s "
                "AND nominal_time > %s AND nominal_time < %s ORDER BY nominal_time",
                f"tick{i}",
                started,
                ended,
            )
            return rows if all(r["state"] in ("succeeded", "skipped", "failed", "lost") for r in rows) else None

        rows = wait_for(settled, timeout_s=20, what="the runs to end")
        times = [r["nominal_time"] for r in rows]
        assert len(times) == len(set(times)), "one row per occurrence"
        assert all(r["state"] == "succeeded" for r in rows), [
            (str(r["nominal_time"]), r["state"], r["reason"]) for r in rows
        ]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        notes = [line for d in daemons for line in d.log().splitlines() if f"tick{i}" in line and "occurrence" in line]
        assert gaps and max(gaps) <= 1.0 + 1e-6, f"occurrences lost around the restart: {gaps} {times} {notes}"
        keys = sink.keys(f"/tick{i}")
        for r in rows:
            assert keys.count(r["key"] or r["run_id"]) == 1, f"{r} reached the sink {keys.count(r['key'])} times"
