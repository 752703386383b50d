"""placement = "one": exactly one copy in the cluster, across SIGKILL and SIGSTOP of the holder's
supervisor, taken over within lease_ttl + 2 s (docs/cluster.md). The copy holds an exclusive
flock on a shared file: a second holder at any moment is recorded as a conflict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervise.protocol.errors import RemoteError
from tests.cluster.conftest import ClusterDb, holders, write_cluster_config
from tests.conftest import REPO, Daemon, alive, wait_for

TTL_S = 2.0


def events(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(kind, int(ppid), float(at)) for kind, ppid, at in rows]


def singleton(tmp: Path) -> dict[str, dict[str, object]]:
    argv = [sys.executable, str(REPO / "tests/children/flock_holder.py"), str(tmp / "lock"), str(tmp / "events")]
    return {"single": {"command": argv, "placement": "one", "stop_timeout": "2s", "backoff": "100ms"}}


def the_holder(db: ClusterDb, daemons: list[Daemon], log: Path) -> Daemon:
    """The daemon whose copy runs (after one start was recorded from it)."""

    def found() -> Daemon | None:
        starts = [ppid for kind, ppid, _ in events(log) if kind == "start"]
        return next((d for d in daemons if starts and starts[-1] == d.pid), None)

    return wait_for(found, timeout_s=15, what="a copy to start")


def kill_and_take_over(holder: Daemon, daemons: list[Daemon], log: Path) -> Daemon:
    """SIGKILL the holder's supervisor; the node whose copy starts next, within lease_ttl + 2 s."""
    killed_at = time.time()
    holder.proc.kill()
    holder.proc.wait()
    taker = wait_for(
        lambda: next((d for d in daemons if d is not holder and d.pid == events(log)[-1][1]), None),
        timeout_s=15,
        what="a takeover after SIGKILL",
    )
    takeover_s = events(log)[-1][2] - killed_at
    assert takeover_s <= TTL_S + 2, f"takeover took {takeover_s:.2f} s"
    return taker


def test_one_copy_across_sigkill_and_sigstop_of_the_holder(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, short_dir: Path
) -> None:
    log = short_dir / "events"
    daemons = [nodes(cluster_db, singleton(short_dir), node=f"n{i}") for i in range(3)]
    names = {d.pid: f"n{i}" for i, d in enumerate(daemons)}
    first = the_holder(cluster_db, daemons, log)
    assert len(holders(cluster_db, "single")) == 1

    # SIGKILL the holder's supervisor: its guard kills the copy, another node takes over
    second = kill_and_take_over(first, daemons, log)

    # SIGSTOP the new holder's supervisor for 3 x lease_ttl: its guard kills the copy before
    # the lease can expire; a third node takes over; resumed, it must not start it again.
    worker = second.service("single")["pid"]
    stopped_at = time.time()
    os.kill(second.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not alive(worker), timeout_s=TTL_S + 1, what="the guard to fence the frozen node's copy")
        fenced_after = time.time() - stopped_at
        third = wait_for(
            lambda: next((d for d in daemons if d not in (first, second) and d.pid == events(log)[-1][1]), None),
            timeout_s=15,
            what="a takeover from the frozen node",
        )
        takeover_s = events(log)[-1][2] - stopped_at
        remaining = 3 * TTL_S - (time.time() - stopped_at)
        if remaining > 0:
            time.sleep(remaining)  # the freeze itself is what is tested: 3 x lease_ttl
    finally:
        os.kill(second.pid, signal.SIGCONT)
    assert fenced_after < TTL_S, f"the guard fenced after {fenced_after:.2f} s, not before the lease ended"
    assert takeover_s <= TTL_S + 2, f"takeover took {takeover_s:.2f} s"
    # resumed: it finds its lease gone and does not act on it
    wait_for(
        lambda: second.state("single") in ("STOPPED", "FATAL"), timeout_s=10, what="the resumed node to stand down"
    )
    deadline = time.monotonic() + 3 * 0.5 + 1  # a few renewal rounds of the resumed node
    while time.monotonic() < deadline:
        assert holders(cluster_db, "single") == [names[third.pid]]
        assert second.state("single") in ("STOPPED", "FATAL")
        time.sleep(0.2)
    assert [kind for kind, _, _ in events(log)].count("conflict") == 0, events(log)
    assert third.state("single") == "RUNNING"


def test_a_second_node_with_the_same_name_refuses_to_start(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, short_dir: Path
) -> None:
    nodes(cluster_db, {}, node="same")
    config = write_cluster_config(short_dir / "twin", cluster_db, {}, node="same")
    twin = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "start", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert twin.returncode == 78, twin.stderr
    assert 'node name "same" is in use by a live node' in twin.stderr


def test_cluster_status_shows_nodes_holdings_and_the_leader(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, short_dir: Path
) -> None:
    import json

    a = nodes(cluster_db, singleton(short_dir), node="alpha")
    nodes(cluster_db, singleton(short_dir), node="beta")
    wait_for(lambda: holders(cluster_db, "single"), timeout_s=15, what="a holder")
    out = a.cli("cluster", "status", "--json", check=True)
    status = json.loads(out.stdout)
    assert {n["name"] for n in status["nodes"]} == {"alpha", "beta"}
    assert status["leader"]["node"] in ("alpha", "beta")
    assert sum(len(n["services"]) for n in status["nodes"]) == 1
    assert all(n["heartbeat_age_s"] < TTL_S for n in status["nodes"])
    text = a.cli("cluster", "status", check=True).stdout
    assert "leader: " in text and "single#0: held by" in text


def test_node_events_and_metrics(nodes: Callable[..., Daemon], cluster_db: ClusterDb, short_dir: Path) -> None:
    import urllib.request

    a = nodes(cluster_db, singleton(short_dir), node="alpha", http="127.0.0.1:0")
    b = nodes(cluster_db, singleton(short_dir), node="beta")

    def kinds(d: Daemon) -> list[tuple[str, object]]:
        found = d.client.call("events", since=0)["events"]
        return [(e["kind"], e.get("node")) for e in found if e["service"] == "cluster"]

    wait_for(lambda: ("node_joined", "beta") in kinds(a), timeout_s=10, what="alpha to see beta join")
    holder = wait_for(lambda: holders(cluster_db, "single"), timeout_s=10, what="a holder")[0]
    b.proc.kill()
    b.proc.wait()
    wait_for(lambda: ("node_lost", "beta") in kinds(a), timeout_s=10, what="alpha to see beta lost")
    if holder == "beta":
        wait_for(lambda: holders(cluster_db, "single") == ["alpha"], timeout_s=10, what="alpha to take over")
    address = a.client.call("ping")["http"]

    def metrics() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def settled() -> str | None:
        text = metrics()
        return text if "supervise_cluster_nodes 1.0" in text else None

    text = wait_for(settled, what="the metrics")
    assert "supervise_cluster_leader 1.0" in text
    assert "supervise_cluster_nodes_lost_total 1.0" in text
    assert "supervise_cluster_placements_held 1.0" in text


def test_stop_start_pause_resume_of_a_singleton_through_a_node_that_does_not_hold_it(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, short_dir: Path
) -> None:
    daemons = {name: nodes(cluster_db, singleton(short_dir), node=name) for name in ("a", "b")}
    holder = wait_for(lambda: holders(cluster_db, "single"), timeout_s=15, what="a holder")[0]
    other = "b" if holder == "a" else "a"
    daemons[holder].wait_state("single", "RUNNING")
    stopped = daemons[other].client.call("stop", name="single")
    assert stopped["services"] == {f"single@{holder}": "STOPPED"}
    assert daemons[holder].state("single") == "STOPPED"
    assert holders(cluster_db, "single") == [holder], "stopped cluster-wide; the holder keeps its copy"
    started = daemons[other].client.call("start", name="single")
    assert started["services"] == {f"single@{holder}": "RUNNING"}
    assert daemons[other].state("single") == "STOPPED"
    paused = daemons[other].client.call("pause", name="single")
    assert paused["services"] == {f"single@{holder}": "PAUSED"}
    assert daemons[holder].state("single") == "PAUSED"
    resumed = daemons[other].client.call("resume", name="single")
    assert resumed["services"] == {f"single@{holder}": "RUNNING"}
    assert [kind for kind, _, _ in events(short_dir / "events")].count("conflict") == 0


def test_a_singleton_added_at_runtime_runs_once_moves_on_sigkill_and_is_removed_everywhere(
    nodes: Callable[..., Daemon], cluster_db: ClusterDb, short_dir: Path
) -> None:
    log = short_dir / "events"
    daemons = [nodes(cluster_db, {}, node=f"n{i}") for i in range(3)]
    names = {d.pid: f"n{i}" for i, d in enumerate(daemons)}
    daemons[0].client.call("add", name="single", spec=singleton(short_dir)["single"])
    first = the_holder(cluster_db, daemons, log)
    assert holders(cluster_db, "single") == [names[first.pid]]
    for d in daemons:
        wait_for(
            lambda d=d: any(s["name"] == "single" for s in d.client.call("status")["services"]),
            timeout_s=10,
            what="every node to have the runtime singleton",
        )
    first.wait_state("single", "RUNNING")
    assert [d.state("single") for d in daemons if d is not first] == ["STOPPED", "STOPPED"]

    # The holder's supervisor SIGKILLed: another node takes the runtime singleton over.
    second = kill_and_take_over(first, daemons, log)

    # A node started later loads it and competes, but does not start a second copy.
    late = nodes(cluster_db, {}, node="n3")
    wait_for(
        lambda: any(s["name"] == "single" for s in late.client.call("status")["services"]),
        timeout_s=10,
        what="the late node to load the runtime singleton",
    )
    daemons.append(late)
    assert late.state("single") == "STOPPED"
    assert holders(cluster_db, "single") == [names[second.pid]]

    # Its placement cannot change by update; removed through a node that does not hold it, it
    # stops on the holder and its lease is given back (no copy anywhere, none taken again).
    other = next(d for d in daemons if d not in (first, second))
    with pytest.raises(RemoteError, match=r'services\.single\.placement: cannot change from "one" to "every"'):
        other.client.call("update", name="single", spec={"placement": "every"})
    worker = second.service("single")["pid"]
    other.client.call("remove", name="single")
    wait_for(lambda: not alive(worker), timeout_s=10, what="the holder's copy to stop")
    wait_for(lambda: not holders(cluster_db, "single"), timeout_s=10, what="the lease to be given back")
    for d in (second, other, late):
        wait_for(
            lambda d=d: all(s["name"] != "single" for s in d.client.call("status")["services"]),
            timeout_s=10,
            what="the removed singleton gone from every live node",
        )
    assert [kind for kind, _, _ in events(log)].count("conflict") == 0, events(log)
