"""LISTEN/NOTIFY wake-ups for runs (docs/cluster.md).

Three nodes. The leader (b) is busy with a run of its own; a runs one and is
SIGKILLed; once its lease expires the leader marks the run lost and queues its
re-run, which it has no slot for. The idle node c, whose `renew_every` (and so
its poll for queued runs) is long, claims it:

- woken by the leader's NOTIFY, long before its next poll;
- with its listening connection killed over and over (the notification lost),
  at one of its polls: later, but it still gets it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from tests.cluster.conftest import ClusterDb, cluster_status, query
from tests.conftest import Daemon, wait_for

LEASE_TTL_S = 3.0  # a and b: a's lease ends soon after it is killed, b rescues it within a second
JOB = {
    "job": {"command": ["sleep", "60"], "manual": True, "overlap": "allow_all", "concurrency": 1, "on_lost": "retry"}
}


def start_nodes(nodes: Callable[..., Daemon], db: ClusterDb, c_renews_every_s: float) -> Daemon:
    """b (the leader, busy), a (running a run), c (idle, polling every `c_renews_every_s`); returns a."""
    b = nodes(db, JOB, node="b", lease_ttl=f"{LEASE_TTL_S:g}s", renew_every="1s")
    wait_for(lambda: (cluster_status(db)["leader"] or {}).get("node") == "b", what="b to lead")
    a = nodes(db, JOB, node="a", lease_ttl=f"{LEASE_TTL_S:g}s", renew_every="1s")
    nodes(db, JOB, node="c", lease_ttl=f"{3 * c_renews_every_s:g}s", renew_every=f"{c_renews_every_s:g}s")
    for node in (b, a):
        run_id = node.client.call("run", name="job")["run_id"]
        wait_for(
            lambda run_id=run_id: query(db, "SELECT 1 FROM {s}.runs WHERE run_id = %s AND state = 'running'", run_id),
            what="the run to start",
        )
    return a


def kill_and_time_the_takeover(a: Daemon, db: ClusterDb) -> tuple[float, dict[str, Any]]:
    """SIGKILL a; the time from its run being marked lost to its re-run being taken, and the re-run."""
    run_id = query(db, "SELECT run_id FROM {s}.runs WHERE node = 'a' AND state = 'running'")[0]["run_id"]
    a.proc.kill()
    a.proc.wait()
    wait_for(
        lambda: query(db, "SELECT 1 FROM {s}.runs WHERE run_id = %s AND state = 'lost'", run_id),
        timeout_s=LEASE_TTL_S + 10,
        interval_s=0.01,
        what="the leader to mark a's run lost",
    )
    lost_at = time.monotonic()
    rerun = wait_for(
        lambda: query(
            db,
            "SELECT node, state, attempt FROM {s}.runs WHERE key = %s AND attempt = 2 "
            "AND state IN ('starting', 'running')",
            run_id,
        ),
        timeout_s=30,
        interval_s=0.01,
        what="a node to take the re-run",
    )[0]
    return time.monotonic() - lost_at, rerun


def test_a_run_queued_by_the_leader_is_claimed_by_an_idle_node_on_its_notification(
    cluster_db: ClusterDb, nodes: Callable[..., Daemon]
) -> None:
    c_polls_every_s = 60.0  # c polled as it joined; its next poll is over 54 s later (start-up took 19 s under load)
    began = time.monotonic()
    a = start_nodes(nodes, cluster_db, c_polls_every_s)
    took_s, rerun = kill_and_time_the_takeover(a, cluster_db)
    print(f"\nclaimed {took_s:.3f} s after it was marked lost, woken by NOTIFY")
    assert rerun["node"] == "c", rerun
    assert time.monotonic() - began < 0.9 * c_polls_every_s, "c cannot have polled since it joined"


@contextmanager
def listener_killed(db: ClusterDb, node: str) -> Iterator[list[int]]:
    """Terminate `node`'s wake-up connection whenever it is up; yields the backends ended."""
    ended: list[int] = []
    stop = threading.Event()

    def kill() -> None:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT pid FROM (SELECT pid, pg_terminate_backend(pid) AS ended FROM pg_stat_activity "
                    "WHERE application_name = %s) AS t WHERE ended",
                    (f"supervise-wake:{node}",),
                ).fetchall()
                ended.extend(int(row[0]) for row in rows)
                stop.wait(0.02)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    try:
        yield ended
    finally:
        stop.set()
        thread.join()


def test_with_its_notification_lost_the_run_is_still_claimed_at_a_poll(
    cluster_db: ClusterDb, nodes: Callable[..., Daemon]
) -> None:
    c_polls_every_s = 3.0
    a = start_nodes(nodes, cluster_db, c_polls_every_s)
    with listener_killed(cluster_db, "c") as ended:
        wait_for(lambda: ended, what="c's wake-up connection to be terminated")
        took_s, rerun = kill_and_time_the_takeover(a, cluster_db)
    print(f"\nclaimed {took_s:.3f} s after it was marked lost, with NOTIFY lost ({len(ended)} connections ended)")
    assert rerun["node"] == "c", rerun
    assert took_s < 2 * c_polls_every_s + 1, f"c's polls should have found it; it took {took_s:.2f} s"
