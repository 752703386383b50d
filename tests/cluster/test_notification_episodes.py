"""Two nodes, one failing scheduled job whose runs land on both: one episode's messages, not two."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.cluster.conftest import ClusterDb, notifying_cluster_config, query
from tests.conftest import Daemon, wait_for
from tests.integration.test_notifications import Receiver, verify

FAILING = {
    "command": ["sh", "-c", "exit 3"],
    "every": "500ms",
    "notify": {"on": ["failure", "recovered"], "to": ["chat"], "min_interval": "5m"},
}


def test_two_nodes_running_one_failing_job_send_one_episodes_messages(
    launch: Callable[[Path], Daemon], short_dir: Path, cluster_db: ClusterDb, hook: Receiver
) -> None:
    hook.start()
    for name in ("a", "b"):
        launch(notifying_cluster_config(short_dir / name, cluster_db, hook, name, {"report": FAILING}))

    def failed_on_both() -> bool:
        rows = query(cluster_db, "SELECT node, count(*) AS n FROM {s}.runs WHERE state = 'failed' GROUP BY node")
        return len(rows) == 2 and all(r["n"] >= 3 for r in rows)

    wait_for(failed_on_both, timeout_s=60, interval_s=0.25, what="failed runs of the job on both nodes")
    failed = query(cluster_db, "SELECT count(*) AS n FROM {s}.runs WHERE state = 'failed'")[0]["n"]

    def counted() -> bool:
        found = query(cluster_db, "SELECT failures FROM {s}.alert_episodes WHERE subject = 'report'")
        return bool(found) and found[0]["failures"] >= failed

    wait_for(counted, timeout_s=20, what="every failed run counted in the one episode")
    (episode,) = query(cluster_db, "SELECT number, failures, held_total FROM {s}.alert_episodes")
    assert episode["number"] == 1 and episode["held_total"] == episode["failures"] - 1
    wait_for(
        lambda: query(cluster_db, "SELECT state FROM {s}.notifications") == [{"state": "delivered"}],
        timeout_s=20,
        what="the one row delivered",
    )
    assert [verify(r)["event"] for r in hook.requests] == ["failure"]
