"""A warm worker enforces its leased runs' deadlines on its own (docs/cluster.md).

A node's supervisor frozen by SIGSTOP renews nothing and tells its workers
nothing: the worker cancels the run when its lease deadline passes and, as the
target here ignores its cancellation, exits. So the run stops on the frozen node
before its lease can expire, and only then does another node run it again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.cluster.conftest import ClusterDb, query
from tests.conftest import REPO, Daemon, wait_for

LEASE_TTL_S = 2.0


def lines(path: Path) -> list[tuple[str, int, int, float]]:
    """The ticker's lines: (run id, attempt, pid, time)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            found.append((parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return found


def test_a_frozen_supervisors_python_run_stops_before_its_lease_ends_and_runs_on_another_node(
    cluster_db: ClusterDb, nodes: Callable[..., Daemon], short_dir: Path
) -> None:
    files = {name: short_dir / f"ticks-{name}.txt" for name in ("a", "b")}

    def job(name: str) -> dict[str, dict[str, object]]:
        return {
            "long": {
                "target": "tests.children.jobs:ticker",
                "manual": True,
                "on_lost": "retry",
                "env": {"RUNS_FILE": str(files[name]), "PYTHONPATH": str(REPO)},
            }
        }

    a = nodes(cluster_db, job("a"), node="a", lease_ttl=f"{LEASE_TTL_S:g}s")
    nodes(cluster_db, job("b"), node="b", lease_ttl=f"{LEASE_TTL_S:g}s")
    run_id = str(a.client.call("run", name="long")["run_id"])
    wait_for(lambda: len(lines(files["a"])) >= 10, what="the run to tick on a")
    worker_pid = lines(files["a"])[-1][2]
    frozen_at = time.time()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: lines(files["b"]), timeout_s=20, what="b to run it again")
        # while a is still frozen: its worker gave up the run by itself
        ended_on_a = lines(files["a"])[-1][3]
        began_on_b = lines(files["b"])[0][3]
        worker_gone = not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == "zombie"
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert ended_on_a < frozen_at + LEASE_TTL_S, (
        f"the run ticked on the frozen node {ended_on_a - frozen_at:.2f} s after the freeze (lease_ttl {LEASE_TTL_S} s)"
    )
    assert ended_on_a < began_on_b, "never two copies of the run at once"
    assert worker_gone, "the worker exited: its run ignored the cancellation"
    assert {(r, attempt) for r, attempt, _, _ in lines(files["b"])} == {(lines(files["b"])[0][0], 2)}

    # resumed, a does not act on the run: the row says lost (by the leader), the re-run goes on on b
    wait_for(lambda: "declared lost" in a.log(), timeout_s=10, what="a to notice it was declared lost")
    said = str(a.client.call("logs", name="long", lines=200))
    assert "its lease was not renewed by its deadline" in said, said[-2000:]
    seen_on_a = len(lines(files["a"]))
    time.sleep(1.0)  # a write or a tick from a would land now, were it not fenced
    assert len(lines(files["a"])) == seen_on_a, "nothing of the run on a after it resumed"
    first = query(cluster_db, "SELECT state, node FROM {s}.runs WHERE run_id = %s", run_id)[0]
    assert first == {"state": "lost", "node": "a"}, first
    rerun = query(cluster_db, "SELECT state, node, attempt FROM {s}.runs WHERE key = %s AND attempt = 2", run_id)
    assert rerun == [{"state": "running", "node": "b", "attempt": 2}], rerun
