"""Runs under leases with three real daemons on one store (docs/cluster.md).

A burst of one-shot http runs and interval schedules; one node is SIGKILLed in the
middle. Every occurrence ends `succeeded` (directly, or through a re-run of a run the
dead node had started); the sink sees every idempotency key at least once, and twice
only for runs the dead node had taken.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tests.cluster.conftest import ClusterDb, Sink, query
from tests.conftest import Daemon, wait_for

BURST = 300
TICKS = 3
LEASE_TTL_S = 2.0


def services(sink: Sink) -> dict[str, dict[str, object]]:
    http = {"action": "http", "method": "POST", "body": "{}"}
    table: dict[str, dict[str, object]] = {
        "hook": {**http, "url": f"{sink.url}/hook", "manual": True, "overlap": "allow_all", "concurrency": 16}
    }
    for i in range(TICKS):
        table[f"tick{i}"] = {**http, "url": f"{sink.url}/tick{i}", "every": "1s"}
    return table


def test_a_node_sigkilled_mid_burst_loses_no_occurrence(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, sink: Sink
) -> None:
    sink.delay_s = 0.05  # runs stay in flight long enough for the kill to catch some
    daemons = [
        nodes(cluster_db, services(sink), node=f"n{i}", allow_addresses=["127.0.0.1"], lease_ttl="2s") for i in range(3)
    ]
    for d in daemons:
        d.wait_running_pid("hook")
    started = datetime.now(UTC)
    at = started + timedelta(seconds=1)
    ids = [str(daemons[i % 3].client.call("schedule", name="hook", at=at.isoformat())["run_id"]) for i in range(BURST)]
    victim = daemons[0]
    wait_for(lambda: len(sink.keys("/hook")) >= BURST // 4, timeout_s=20, what="the burst to be under way")
    victim.proc.kill()
    victim.proc.wait()
    killed = datetime.now(UTC)
    alive = daemons[1:]

    def every_key_succeeded() -> bool | list[dict[str, object]]:
        rows = query(
            cluster_db,
            "SELECT coalesce(key, run_id) AS k, run_id, state, node, epoch, attempt, reason FROM {s}.runs "
            "WHERE service = 'hook'",
        )
        done = {r["k"] for r in rows if r["state"] == "succeeded"}
        missing = [r for r in rows if r["k"] not in done]
        return not missing or missing[:5]  # type: ignore[return-value]

    try:
        wait_for(lambda: every_key_succeeded() is True, timeout_s=40, interval_s=0.25, what="every run to succeed")
    except AssertionError:
        raise AssertionError(f"runs that did not succeed: {every_key_succeeded()}") from None
    wait_for(
        lambda: (datetime.now(UTC) - killed).total_seconds() > LEASE_TTL_S + 2, timeout_s=10, what="a few more ticks"
    )
    for d in alive:
        for i in range(TICKS):
            d.client.call("pause", name=f"tick{i}")

    # the burst: nothing still waiting, every key at the sink, duplicates only from the dead node
    rows = query(
        cluster_db,
        "SELECT run_id, coalesce(key, run_id) AS k, state, node, reason, epoch FROM {s}.runs WHERE service = 'hook'",
    )
    assert not [r for r in rows if r["state"] not in ("succeeded", "lost")], "every run ended"
    seen = sink.keys("/hook")
    assert set(seen) >= set(ids), "every idempotency key reached the sink"
    twice = {k for k in seen if seen.count(k) > 1}
    # n0's runs: lost with it (node n0), or queued again by the leader (the reason names n0)
    dead_nodes_keys = {r["k"] for r in rows if r["node"] == "n0" or "node n0 " in (r["reason"] or "")}
    odd = [r for r in rows if r["k"] in twice - dead_nodes_keys]
    assert not odd, f"keys sent twice that n0 never held: {odd[:5]}"
    lost = [r for r in rows if r["state"] == "lost"]
    assert all(r["node"] == "n0" for r in lost), "only the dead node's started runs were lost"

    # the schedules: one succeeded run per nominal second, none skipped, no gap, across the kill
    for i in range(TICKS):
        ticks = query(
            cluster_db,
            "SELECT nominal_time, state, attempt FROM {s}.runs WHERE service = %s AND nominal_time > %s "
            "ORDER BY nominal_time, attempt",
            f"tick{i}",
            started,
        )
        by_time: dict[datetime, list[str]] = {}
        for t in ticks:
            by_time.setdefault(t["nominal_time"], []).append(t["state"])
        times = sorted(by_time)
        assert len(times) >= 5
        for when in times[:-1]:  # the newest may still be running at pause
            assert "succeeded" in by_time[when], f"tick{i} at {when}: {by_time[when]}"
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps) <= 1.0 + 1e-6, f"tick{i} missed occurrences: gaps {gaps}"
    epochs = {int(e) for _, _, e, _ in sink.arrivals if e}
    assert epochs and min(epochs) >= 1, "every call carries the run's fencing epoch"


def test_a_node_frozen_for_three_lease_ttls_finds_its_run_taken_over_and_stops_it(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    import os
    import signal
    import time

    import psutil

    job = {"slow": {"command": ["sleep", "30"], "manual": True, "on_lost": "retry"}}
    a = nodes(cluster_db, job, node="a")
    b = nodes(cluster_db, job, node="b")
    run_id = str(a.client.call("run", name="slow")["run_id"])
    pid = wait_for(
        lambda: query(cluster_db, "SELECT pid FROM {s}.runs WHERE run_id = %s AND state = 'running'", run_id),
        what="the run to start on a",
    )[0]["pid"]
    os.kill(a.pid, signal.SIGSTOP)
    try:
        rerun = wait_for(
            lambda: query(
                cluster_db,
                "SELECT run_id, node, attempt, epoch FROM {s}.runs WHERE key = %s AND state = 'running'",
                run_id,
            ),
            timeout_s=15,
            what="b to run it again",
        )[0]
        time.sleep(max(0.0, 3 * LEASE_TTL_S - 2))  # frozen for 3 x lease_ttl in all
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert rerun["node"] == "b" and rerun["attempt"] == 2
    # resumed, a stops its copy at once and its writes change nothing
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        timeout_s=10,
        what="a to kill its copy",
    )
    wait_for(lambda: "lease" in a.log(), timeout_s=10, what="a to log the lost lease")
    time.sleep(1)  # a's reaped run would be written now, were it not fenced
    first = query(cluster_db, "SELECT state, node, error FROM {s}.runs WHERE run_id = %s", run_id)[0]
    assert first["state"] == "lost" and first["node"] == "a", first
    assert "stopped renewing" in first["error"]
    assert b.client.call("runs", name="slow", limit=10)["runs"][0]["state"] == "running"


def test_cancel_through_any_node_reaches_the_node_that_runs_it(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb
) -> None:
    import time

    import psutil

    job = {"slow": {"command": ["sleep", "30"], "manual": True}}
    a = nodes(cluster_db, job, node="a")
    b = nodes(cluster_db, job, node="b")
    run_id = str(a.client.call("run", name="slow")["run_id"])
    pid = wait_for(
        lambda: query(cluster_db, "SELECT pid FROM {s}.runs WHERE run_id = %s AND state = 'running'", run_id),
        what="the run to start on a",
    )[0]["pid"]
    asked = time.monotonic()
    reply = b.client.call("cancel", run_id=run_id)  # b does not run it: the command goes to a
    took = time.monotonic() - asked
    assert reply["run_id"] == run_id
    assert took < 2.0, f"the relayed cancel took {took:.2f} s (NOTIFY should wake a at once)"
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", what="a to stop it")
    final = wait_for(
        lambda: query(cluster_db, "SELECT state FROM {s}.runs WHERE run_id = %s AND state = 'cancelled'", run_id),
        what="the run to be cancelled",
    )
    assert final[0]["state"] == "cancelled"
    # a run nobody holds any more is refused by name, not relayed
    from supervise.protocol.errors import RemoteError

    try:
        b.client.call("cancel", run_id=run_id)
    except RemoteError as e:
        assert "already cancelled" in str(e)
    else:
        raise AssertionError("a finished run cannot be cancelled")
