"""A missed occurrence in cluster mode: its `skipped` row and its notification are one transaction.

Two nodes catch up the same missed occurrence; the insert that wins its unique key writes
the row, the episode and the outbox row together, and the node whose insert lost writes
nothing (docs/notifications.md, "What is written in one transaction").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cluster.conftest import ClusterDb, notifying_cluster_config, query
from tests.conftest import Daemon, stop_daemon, wait_for
from tests.integration.test_notifications import Receiver, verify


def hourly() -> dict[str, object]:
    """Hourly, on a grid anchored 5 minutes ago: one time passed 5 minutes ago, the next is 55
    minutes away (no occurrence comes due during the test)."""
    anchor = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    return {"command": ["true"], "every": "1h", "anchor": anchor, "notify": {"on": ["missed"], "to": ["chat"]}}


REFUSE = """
CREATE FUNCTION {s}.refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'outbox refused by the test'; END $$;
CREATE TRIGGER refuse_outbox BEFORE INSERT ON {s}.notifications FOR EACH ROW EXECUTE FUNCTION {s}.refuse_outbox();
"""


def execute(db: ClusterDb, text: str) -> None:
    """A statement without rows on the cluster's schema (`{s}` is the schema)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(text).format(s=sql.Identifier(db.schema)))  # type: ignore[arg-type]


def test_a_missed_occurrence_is_one_skipped_row_with_its_notification_written_atomically(
    launch: Callable[[Path], Daemon], short_dir: Path, cluster_db: ClusterDb, hook: Receiver
) -> None:
    hook.start()
    job = hourly()
    first = launch(
        notifying_cluster_config(short_dir / "boot", cluster_db, hook, "boot", {"report": job})
    )  # creates the schema
    stop_daemon(first)
    # The job last fired 65 minutes ago: its next time, 5 minutes ago, is outside the catch-up window.
    execute(
        cluster_db,
        "INSERT INTO {s}.schedules VALUES ('report', false, now() - interval '65 minutes', 1, false, NULL) "
        "ON CONFLICT (service) DO UPDATE SET last_fired = EXCLUDED.last_fired",
    )
    for statement in REFUSE.strip().split(";\n"):
        execute(cluster_db, statement)
    nodes = [
        launch(notifying_cluster_config(short_dir / name, cluster_db, hook, name, {"report": job}))
        for name in ("a", "b")
    ]

    wait_for(
        lambda: any("outbox refused by the test" in d.log() for d in nodes),
        timeout_s=20,
        what="a node's write of the skipped row and its outbox row refused",
    )
    assert query(cluster_db, "SELECT run_id FROM {s}.runs WHERE service = 'report'") == [], (
        "the refused outbox row took the skipped row's insert with it"
    )
    assert query(cluster_db, "SELECT id FROM {s}.notifications") == []
    assert query(cluster_db, "SELECT failures FROM {s}.alert_episodes") == []

    execute(cluster_db, "DROP TRIGGER refuse_outbox ON {s}.notifications")
    wait_for(
        lambda: query(cluster_db, "SELECT state FROM {s}.notifications") == [{"state": "delivered"}],
        timeout_s=30,
        what="the missed occurrence's row written (on the writer's retry) and delivered",
    )
    (skipped,) = query(cluster_db, "SELECT run_id, state, reason, node FROM {s}.runs WHERE service = 'report'")
    assert (skipped["state"], skipped["reason"]) == ("skipped", "missed")
    (row,) = query(cluster_db, "SELECT id, event FROM {s}.notifications")
    assert (row["id"], row["event"]) == (f"run:{skipped['run_id']}|missed|chat", "missed")
    (episode,) = query(cluster_db, "SELECT failures FROM {s}.alert_episodes WHERE subject = 'report'")
    assert episode["failures"] == 1, "the node whose insert lost counted nothing"
    wait_for(lambda: len(hook.requests) >= 1, timeout_s=10, what="the webhook")
    assert [verify(r)["event"] for r in hook.requests] == ["missed"]
    events = [
        e
        for d in nodes
        for e in d.client.call("events", since=0, limit=1000)["events"]
        if e["kind"] == "run_skipped" and e["service"] == "report"
    ]
    assert [e["run_id"] for e in events] == [skipped["run_id"]], "one event, the winner's"
