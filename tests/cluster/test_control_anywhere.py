"""Control from any node of the scheduled services declared in the nodes' config files
(docs/cluster.md): `skip` of the next occurrence, and `pause`/`resume`, asked of one node, hold
on every node. Real daemons on one PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tests.cluster.conftest import ClusterDb, query
from tests.conftest import Daemon, stop_daemon, wait_for


def job(every: str) -> dict[str, dict[str, object]]:
    return {"job": {"command": ["true"], "every": every}}


def db_now(db: ClusterDb) -> datetime:
    now: datetime = query(db, "SELECT now() AS now")[0]["now"]
    return now


def occurrences(db: ClusterDb) -> list[dict[str, Any]]:
    return query(
        db,
        "SELECT run_id, nominal_time, state, reason, node, created_at FROM {s}.runs "
        "WHERE service = 'job' AND nominal_time IS NOT NULL ORDER BY nominal_time",
    )


def paused_on(daemon: Daemon) -> bool:
    return bool(daemon.service("job")["schedule"]["paused"])


def test_a_skip_asked_of_one_node_skips_the_occurrence_on_every_node(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    a, _b = (nodes(cluster_db, job("3s"), node=name) for name in ("a", "b"))
    first = wait_for(lambda: occurrences(cluster_db), timeout_s=20, what="a first occurrence")
    # Just after an occurrence fired, the next one is about 3 s away: asked now, the skip comes first.
    wait_for(lambda: len(occurrences(cluster_db)) > len(first), timeout_s=20, what="a new occurrence")
    skipping = datetime.fromisoformat(a.client.call("skip", name="job")["skipping"])
    again = datetime.fromisoformat(a.client.call("skip", name="job")["skipping"])
    assert again == skipping, "asked again: the same occurrence, skipped already"
    # The skip is the cluster's, not node a's: with a gone, b does not run that occurrence.
    stop_daemon(a)
    wait_for(
        lambda: any(r["nominal_time"] > skipping and r["state"] == "succeeded" for r in occurrences(cluster_db)),
        timeout_s=20,
        what="the occurrence after the skipped one to run",
    )
    at_skip = [r for r in occurrences(cluster_db) if r["nominal_time"] == skipping]
    assert [(r["state"], r["reason"]) for r in at_skip] == [("skipped", "user_skip")], at_skip
    nominal = [r["nominal_time"] for r in occurrences(cluster_db)]
    assert len(nominal) == len(set(nominal)), "one row per occurrence"
    ran = [r for r in occurrences(cluster_db) if r["nominal_time"] != skipping]
    assert all(r["state"] in ("succeeded", "starting", "running") for r in ran), ran


def test_pause_and_resume_of_a_config_job_asked_of_one_node_hold_on_every_node(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    a, b = (nodes(cluster_db, job("1s"), node=name) for name in ("a", "b"))
    wait_for(lambda: len(occurrences(cluster_db)) >= 2, timeout_s=20, what="occurrences")

    a.client.call("pause", name="job")
    wait_for(lambda: paused_on(b), timeout_s=10, what="node b to apply the pause asked of node a")
    assert paused_on(a)
    paused_at = db_now(cluster_db)
    # A node started later, whose config fires the job on another interval, comes up paused too
    # (the pause is keyed by the service's name).
    c = nodes(cluster_db, job("2s"), node="c")
    wait_for(lambda: paused_on(c), timeout_s=10, what="the late node to load the pause")
    wait_for(lambda: db_now(cluster_db) >= paused_at + timedelta(seconds=4), timeout_s=30, what="4 s while paused")
    late = [r for r in occurrences(cluster_db) if r["created_at"] >= paused_at]
    assert not late, f"fired while paused: {late}"

    b.client.call("resume", name="job")
    for node in (a, c):
        wait_for(lambda node=node: not paused_on(node), timeout_s=10, what="every node to apply the resume")
    resumed_at = db_now(cluster_db)
    wait_for(
        lambda: (
            {r["node"] for r in occurrences(cluster_db) if r["created_at"] >= resumed_at} >= {"a", "b", "c"}
            or len([r for r in occurrences(cluster_db) if r["created_at"] >= resumed_at]) >= 6
        ),
        timeout_s=20,
        what="the job firing again after the resume",
    )
    assert query(cluster_db, "SELECT name, paused FROM {s}.config_pauses") == [{"name": "job", "paused": False}]
    assert query(cluster_db, "SELECT name FROM {s}.registrations") == [], "not made a runtime service"
