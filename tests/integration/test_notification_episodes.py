"""No-storm episodes kept in the store: a restarted supervisor goes on with the episode it had."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Daemon, wait_for
from tests.integration.test_notifications import Receiver, outbox, receiver, verify, webhook, write  # noqa: F401

LOOPING = {
    "command": ["sh", "-c", "echo 'no config' >&2; exit 1"],
    "max_restarts": 10_000,
    "restart_window": "10m",
    "backoff": "100ms",
    "backoff_max": "100ms",
    "notify": {"on": ["failure", "fatal", "recovered"], "to": ["chat"], "min_interval": "5m"},
}


def episode(state_dir: Path, subject: str) -> tuple[int, int, int]:
    """(number, failures, held events) of the subject's episode, read from the history file."""
    with sqlite3.connect(f"file:{state_dir / 'history.db'}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT number, failures, held_total FROM alert_episodes WHERE subject = ?", (subject,)
        ).fetchone()
    return (0, 0, 0) if found is None else (int(found[0]), int(found[1]), int(found[2]))


def test_a_supervisor_restarted_during_a_crash_loop_does_not_send_a_second_started_failing_message(
    launch: Callable[[Path], Daemon], short_dir: Path, receiver: Receiver
) -> None:
    receiver.start()
    config = write(short_dir, {"chat": webhook(receiver)}, {"looping": LOOPING})
    state = short_dir / "state"
    first = launch(config)
    wait_for(lambda: len(receiver.requests) == 1, timeout_s=20, what="the first failure's message")
    wait_for(lambda: episode(state, "looping")[1] >= 3, timeout_s=20, what="more failures counted")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    before = episode(state, "looping")

    second = launch(config)
    wait_for(
        lambda: episode(state, "looping")[1] >= before[1] + 3, timeout_s=20, what="the new start's failures counted"
    )
    number, failures, held = episode(state, "looping")
    assert number == before[0] == 1, "the same episode goes on"
    assert held >= 3
    assert [verify(r)["event"] for r in receiver.requests] == ["failure"]
    rows = outbox(second)
    assert [(r["event"], r["state"]) for r in rows] == [("failure", "delivered")]
