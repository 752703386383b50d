"""Runs under leases with three real daemons on one store (docs/cluster.md).

One-shot http runs spread over a few seconds and interval schedules; one node is
SIGKILLed in the middle. Every occurrence ends `succeeded` (directly, or through a
re-run of a run the dead node had started); the sink sees every idempotency key at
least once, and twice only for runs the dead node had taken.

The default size fits the suite on a small machine; `SUPERVISE_CLUSTER_SCALE=full`
runs the size of the cluster issue: 10 000 one-shot occurrences and 20 interval
schedules over 30 s (docs/cluster.md, "Figures").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tests.cluster.conftest import ClusterDb, Sink, query
from tests.conftest import Daemon, wait_for

LEASE_TTL_S = 2.0


@dataclass(frozen=True)
class Size:
    """How big the burst test is."""

    oneshots: int  # one-shot occurrences of `hook`
    ticks: int  # interval schedules, every 1 s
    spread_s: float  # the one-shots' times spread over this long
    sink_delay_s: float  # each call's time at the sink
    concurrency: int  # `hook` runs at once per node
    settle_s: float  # time allowed after the last one-shot's time for every run to succeed
    lease_ttl_s: float  # renew_every is a quarter of it


DEFAULT = Size(oneshots=300, ticks=5, spread_s=3.0, sink_delay_s=0.05, concurrency=16, settle_s=40.0, lease_ttl_s=4.0)
FULL = Size(
    oneshots=10_000, ticks=20, spread_s=30.0, sink_delay_s=0.01, concurrency=32, settle_s=240.0, lease_ttl_s=15.0
)
SIZE = FULL if os.environ.get("SUPERVISE_CLUSTER_SCALE") == "full" else DEFAULT
BATCH = 50  # one-shots per `schedule` call: each call's inserts hold up that node's event loop


def services(sink: Sink, size: Size) -> dict[str, dict[str, object]]:
    http = {"action": "http", "method": "POST", "body": "{}"}
    table: dict[str, dict[str, object]] = {
        "hook": {
            **http,
            "url": f"{sink.url}/hook",
            "manual": True,
            "overlap": "allow_all",
            "concurrency": size.concurrency,
        }
    }
    for i in range(size.ticks):  # commands: a warm worker each would be 20 more processes per node
        # allow_all: an occurrence that fires while the node still runs the previous one (started
        # late under load, or a re-run of the killed node's) starts too, rather than being skipped;
        # catchup all: times every node's loop slept through (load) run too, rather than superseded
        table[f"tick{i}"] = {
            "command": ["true"],
            "every": "1s",
            "on_lost": "retry",
            "overlap": "allow_all",
            "catchup": "all",
        }
    return table


# the test's own deadlines, not the suite's per-test limit (the full size needs minutes under load)
@pytest.mark.timeout(60 + 2 * (SIZE.spread_s + SIZE.settle_s + SIZE.lease_ttl_s))
def test_a_node_sigkilled_mid_burst_loses_no_occurrence(
    cluster_db: ClusterDb, sink: Sink, nodes: Callable[..., Daemon]
) -> None:
    size = SIZE
    sink.delay_s = size.sink_delay_s  # runs stay in flight long enough for the kill to catch some
    daemons = [
        nodes(
            cluster_db,
            services(sink, size),
            node=f"n{i}",
            allow_addresses=["127.0.0.1"],
            lease_ttl=f"{size.lease_ttl_s:g}s",
            renew_every=f"{size.lease_ttl_s / 4:g}s",
        )
        for i in range(3)
    ]
    for d in daemons:
        d.wait_running_pid("hook")
    began = time.monotonic()
    started = datetime.now(UTC)
    first = started + timedelta(seconds=2)
    step = size.spread_s / size.oneshots
    times = [(first + timedelta(seconds=i * step)).isoformat() for i in range(size.oneshots)]
    ids: list[str] = []
    for n, at in enumerate(range(0, size.oneshots, BATCH)):
        batch = [{"at": when, "args": {}} for when in times[at : at + BATCH]]
        reply = daemons[n % 3].client.request("schedule", {"name": "hook", "runs": batch}, timeout_s=60)
        ids += [str(r) for r in reply["run_ids"]]  # type: ignore[index]
    assert len(set(ids)) == size.oneshots
    scheduled_s = time.monotonic() - began
    victim = daemons[0]
    wait_for(
        lambda: len(sink.keys("/hook")) >= size.oneshots // 2,
        timeout_s=size.spread_s + size.settle_s,
        what="the burst to be half way",
    )
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
        wait_for(
            lambda: every_key_succeeded() is True,
            timeout_s=size.spread_s + size.settle_s,
            interval_s=0.5,
            what="every run to succeed",
        )
    except AssertionError:
        raise AssertionError(f"runs that did not succeed: {every_key_succeeded()}") from None
    done_s = time.monotonic() - began
    wait_for(
        lambda: (datetime.now(UTC) - killed).total_seconds() > size.lease_ttl_s + 2,
        timeout_s=size.lease_ttl_s + 10,
        what="a few more ticks",
    )
    for d in alive:
        for i in range(size.ticks):
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
    print(
        f"\n{size.oneshots} one-shots over {size.spread_s:.0f} s and {size.ticks} interval schedules on 3 nodes: "
        f"scheduled in {scheduled_s:.1f} s, every occurrence succeeded {done_s:.1f} s after the first call; "
        f"{len(lost)} runs lost with the killed node "
        f"and re-run, {len(twice)} keys sent twice (all of the killed node's runs)"
    )

    # the schedules: one succeeded run per nominal second, none skipped, no gap, across the kill
    # (the killed node's last occurrences run once its leases expire and the leader queues them again)
    def tick_problems() -> list[str]:
        problems: list[str] = []
        for i in range(size.ticks):
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
            nominal = sorted(by_time)
            if len(nominal) < 5:
                problems.append(f"tick{i}: only {len(nominal)} occurrences")
                continue
            # the newest may still be running at pause
            problems += [
                f"tick{i} at {when}: {by_time[when]}" for when in nominal[:-1] if "succeeded" not in by_time[when]
            ]
            gaps = [(b - a).total_seconds() for a, b in zip(nominal, nominal[1:], strict=False)]
            if max(gaps) > 1.0 + 1e-6:
                problems.append(f"tick{i} missed occurrences: gaps {gaps}")
        return problems

    try:
        wait_for(
            lambda: not tick_problems(),
            timeout_s=2 * size.lease_ttl_s + 10,
            interval_s=0.5,
            what="every interval occurrence to succeed",
        )
    except AssertionError:
        raise AssertionError(f"interval occurrences: {tick_problems()[:5]}") from None
    epochs = {int(e) for _, _, e, _ in sink.arrivals if e}
    assert epochs and min(epochs) >= 1, "every call carries the run's fencing epoch"


def test_a_node_frozen_for_three_lease_ttls_finds_its_run_taken_over_and_stops_it(
    cluster_db: ClusterDb, nodes: Callable[..., Daemon]
) -> None:
    import signal

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
    frozen_at = time.monotonic()
    try:
        # The orphan guard holds the run's process group to the node's fencing deadline (the last
        # renewal + lease_ttl - margin): it is killed while its supervisor is still stopped.
        wait_for(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
            timeout_s=2 * LEASE_TTL_S,
            interval_s=0.02,
            what="the guard to kill a's copy while a is frozen",
        )
        killed_after = time.monotonic() - frozen_at
        assert killed_after < LEASE_TTL_S, f"killed {killed_after:.2f} s after the freeze, not before lease_ttl"
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
    # resumed, a finds its lease gone and its writes change nothing
    wait_for(lambda: "lease" in a.log(), timeout_s=10, what="a to log the lost lease")
    time.sleep(1)  # a's reaped run would be written now, were it not fenced
    first = query(cluster_db, "SELECT state, node, error FROM {s}.runs WHERE run_id = %s", run_id)[0]
    assert first["state"] == "lost" and first["node"] == "a", first
    assert "stopped renewing" in first["error"]
    assert b.client.call("runs", name="slow", limit=10)["runs"][0]["state"] == "running"


def test_cancel_through_any_node_reaches_the_node_that_runs_it(
    cluster_db: ClusterDb, nodes: Callable[..., Daemon]
) -> None:
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
