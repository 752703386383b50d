"""Schedules added at runtime live in the cluster's store (docs/cluster.md): a job added through
one node is listed and fired by the cluster once per occurrence; an update through another node
reschedules it on every node; a node started later loads it; pause and resume act cluster-wide;
removal stops it everywhere and cancels its waiting runs. Real daemons on one PostgreSQL."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from supervise.protocol.errors import RemoteError
from tests.cluster.conftest import ClusterDb, Sink, query
from tests.conftest import Daemon, wait_for


def job_spec(sink: Sink, every: str) -> dict[str, object]:
    return {"action": "http", "method": "POST", "body": "{}", "url": f"{sink.url}/job", "every": every}


def schedule_of(daemon: Daemon) -> dict[str, Any] | None:
    """The job's schedule as the node shows it, or None when the node does not have the job."""
    try:
        schedule: dict[str, Any] = daemon.service("job")["schedule"]
    except RemoteError:
        return None
    return schedule


def db_now(db: ClusterDb) -> datetime:
    now: datetime = query(db, "SELECT now() AS now")[0]["now"]
    return now


def occurrences(db: ClusterDb, since: datetime | None = None) -> list[dict[str, Any]]:
    rows = query(
        db,
        "SELECT run_id, coalesce(key, run_id) AS k, nominal_time, state, node, created_at FROM {s}.runs "
        "WHERE service = 'job' AND origin = 'schedule' ORDER BY nominal_time",
    )
    return [r for r in rows if since is None or r["created_at"] >= since]


def wait_until_db_time(db: ClusterDb, when: datetime, what: str) -> None:
    """Let the cluster's clock pass `when` (an observation window: nothing may fire in it)."""
    wait_for(lambda: db_now(db) >= when, timeout_s=30, what=what)


def test_a_job_added_through_one_node_is_the_clusters(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, sink: Sink
) -> None:
    a, b = (nodes(cluster_db, {}, node=f"n{i}", allow_addresses=["127.0.0.1"]) for i in range(2))

    # Added through A: B lists it, and the cluster fires each occurrence once.
    added = a.client.call("add", name="job", spec=job_spec(sink, "1s"))
    assert added["name"] == "job"
    wait_for(lambda: schedule_of(b), timeout_s=10, what="node B to list the job")
    wait_for(lambda: len(sink.keys("/job")) >= 4, timeout_s=20, what="four occurrences")
    fired = occurrences(cluster_db)
    nominal = [r["nominal_time"] for r in fired]
    assert len(nominal) == len(set(nominal)), "one row per occurrence"
    assert all(t2 - t1 == timedelta(seconds=1) for t1, t2 in zip(nominal, nominal[1:], strict=False)), nominal
    keys = collections.Counter(sink.keys("/job"))
    assert max(keys.values()) == 1, f"an occurrence ran twice: {keys.most_common(3)}"

    # Updated through B: every node reschedules its pending occurrence on the new interval.
    b.client.call("update", name="job", spec={"every": "2s"})
    for node in (a, b):
        wait_for(
            lambda node=node: (s := schedule_of(node)) is not None and "2s" in str(s["trigger"]) and s,
            timeout_s=10,
            what="every node to have the new interval",
        )
    updated_at = db_now(cluster_db)
    wait_for(lambda: len(occurrences(cluster_db, updated_at)) >= 3, timeout_s=20, what="occurrences after the update")
    after = [r["nominal_time"] for r in occurrences(cluster_db, updated_at)]
    assert all(t2 - t1 == timedelta(seconds=2) for t1, t2 in zip(after, after[1:], strict=False)), after

    # Paused through B: no node fires it.
    b.client.call("pause", name="job")
    for node in (a, b):
        wait_for(lambda node=node: (s := schedule_of(node)) and s["paused"], timeout_s=10, what="paused everywhere")
    paused_at = db_now(cluster_db)

    # A node started after the add loads the job, with its update and its pause.
    c = nodes(cluster_db, {}, node="n2", allow_addresses=["127.0.0.1"])
    loaded = wait_for(lambda: schedule_of(c), timeout_s=10, what="the late node to load the job")
    assert "2s" in str(loaded["trigger"]) and loaded["paused"], loaded

    wait_until_db_time(cluster_db, paused_at + timedelta(seconds=5), "two intervals and more while paused")
    # Fired (inserted) once every node had the pause; an occurrence a node fired ahead of its time
    # before it learnt of the pause may have a later nominal time (docs/cluster.md: the guarantee).
    late = occurrences(cluster_db, paused_at)
    assert not late, f"fired while paused: {late}"

    # Resumed through C: it fires again.
    c.client.call("resume", name="job")
    for node in (a, b, c):
        wait_for(lambda node=node: (s := schedule_of(node)) and not s["paused"], timeout_s=10, what="resumed")
    resumed_at = db_now(cluster_db)
    wait_for(
        lambda: [r for r in occurrences(cluster_db) if r["nominal_time"] > resumed_at],
        timeout_s=15,
        what="an occurrence after the resume",
    )

    # Removed through A: gone from every node, its pending one-shot cancelled; nothing fires any more.
    oneshot = b.client.call("schedule", name="job", at=(db_now(cluster_db) + timedelta(seconds=20)).isoformat())
    a.client.call("remove", name="job")
    for node in (a, b, c):
        wait_for(lambda node=node: schedule_of(node) is None, timeout_s=10, what="the job gone from every node")
    removed_at = db_now(cluster_db)
    wait_until_db_time(cluster_db, removed_at + timedelta(seconds=5), "two intervals and more after the removal")
    late = occurrences(cluster_db, removed_at)
    assert not late, f"fired after the removal: {late}"
    assert not query(cluster_db, "SELECT name FROM {s}.registrations")
    waiting = query(
        cluster_db,
        "SELECT state FROM {s}.runs WHERE service = 'job' AND state IN ('pending', 'due', 'queued', 'buffered')",
    )
    assert not waiting
    cancelled = query(cluster_db, "SELECT state, reason FROM {s}.runs WHERE run_id = %s", oneshot["run_id"])
    assert cancelled == [{"state": "cancelled", "reason": "the service was removed"}]
    keys = collections.Counter(sink.keys("/job"))
    assert max(keys.values()) == 1, f"an occurrence ran twice: {keys.most_common(3)}"
    rows = occurrences(cluster_db)
    succeeded = {r["k"] for r in rows if r["state"] == "succeeded"}
    assert succeeded <= set(keys) <= {r["k"] for r in rows}, "each call is one of the job's occurrences"
    # (a call may belong to a run cancelled in flight by the update or the removal)


def test_runtime_changes_that_would_split_the_cluster_are_refused(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    web = {"command": ["sleep", "600"]}
    a = nodes(cluster_db, {"web": web}, node="n0")
    b = nodes(cluster_db, {"web": web, "dup": web}, node="n1")  # B's config also declares "dup"
    for node in (a, b):
        node.wait_state("web", "RUNNING")
    with pytest.raises(RemoteError, match="declared in this node's config file"):
        a.client.call("update", name="web", spec={"stop_timeout": "2s"})
    with pytest.raises(RemoteError, match="declared in this node's config file"):
        a.client.call("remove", name="web")
    with pytest.raises(RemoteError, match=r"services\.solo\.placement: applies to long-running services"):
        a.client.call("add", name="solo", spec={"command": ["true"], "every": "1s", "placement": "one"})
    assert not query(cluster_db, "SELECT name FROM {s}.registrations"), "a refused add writes nothing"

    # A long-running service added at runtime runs on every node (placement "every").
    a.client.call("add", name="extra", spec={"command": ["sleep", "600"]})
    for node in (a, b):
        node.wait_state("extra", "RUNNING")
    with pytest.raises(RemoteError, match='"extra" exists'):
        b.client.call("add", name="extra", spec={"command": ["sleep", "60"]})
    b.client.call("remove", name="extra")
    for node in (a, b):
        wait_for(
            lambda node=node: all(s["name"] != "extra" for s in node.client.call("status")["services"]),
            timeout_s=10,
            what="the removed service gone from every node",
        )

    # A runtime service named as one of B's config services: B keeps its own (and says so).
    a.client.call("add", name="dup", spec={"command": ["sleep", "60"]})
    a.wait_state("dup", "RUNNING")
    wait_for(lambda: "runtime service dup is shadowed here" in b.log(), timeout_s=10, what="B to log the shadowing")
    assert b.service("dup")["origin"] == "config"
    a.client.call("remove", name="dup")
    assert b.state("dup") == "RUNNING", "B's own dup is not the cluster's to remove"


def test_a_change_whose_notification_was_missed_is_applied_by_the_poll(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    a = nodes(cluster_db, {}, node="n0")
    a.client.call("add", name="first", spec={"command": ["sleep", "600"]})  # the table and its sequence exist
    # Written as another node would, but with no NOTIFY: only the poll (every renew_every) finds it.
    query(
        cluster_db,
        "INSERT INTO {s}.registrations (name, spec, paused, revision, spec_revision, updated_by) "
        "SELECT 'polled', %s::jsonb, false, r, r, 'elsewhere' FROM nextval(%s::regclass) AS n(r) RETURNING name",
        json.dumps({"command": ["sleep", "600"]}),
        f'"{cluster_db.schema}".registration_revisions',
    )
    a.wait_state("polled", "RUNNING", timeout_s=10)
    query(cluster_db, "DELETE FROM {s}.registrations WHERE name = 'polled' RETURNING name")
    wait_for(
        lambda: all(s["name"] != "polled" for s in a.client.call("status")["services"]),
        timeout_s=10,
        what="the poll to remove it",
    )


def test_an_update_on_a_stale_copy_is_refused_and_the_retry_applies_to_the_latest(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    # Polls 10 s apart: the change written below (without NOTIFY) stays unseen by the node meanwhile.
    a = nodes(cluster_db, {}, node="n0", lease_ttl="30s", renew_every="10s")
    a.client.call("add", name="job", spec={"command": ["true"], "every": "1h"})
    query(
        cluster_db,
        "UPDATE {s}.registrations SET spec = %s::jsonb, revision = r, spec_revision = r, updated_by = 'elsewhere' "
        "FROM nextval(%s::regclass) AS n(r) WHERE name = 'job' RETURNING name",
        json.dumps({"command": ["true"], "every": "2h"}),
        f'"{cluster_db.schema}".registration_revisions',
    )
    with pytest.raises(RemoteError, match="changed or removed through another node meanwhile"):
        a.client.call("update", name="job", spec={"jitter": "1s"})
    assert "2h" in str(a.service("job")["schedule"]["trigger"]), "the refusal applied the other change here"
    a.client.call("update", name="job", spec={"jitter": "1s"})
    spec = query(cluster_db, "SELECT spec FROM {s}.registrations WHERE name = 'job'")[0]["spec"]
    assert spec == {"command": ["true"], "every": "2h", "jitter": "1s"}, "the retry patched the latest spec"
