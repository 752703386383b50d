"""No-storm episodes kept in the store: a restarted supervisor goes on with the episode it had."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Daemon, wait_for
from tests.integration.test_notifications import Receiver, outbox, verify, webhook, write

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
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    config = write(short_dir, {"chat": webhook(hook)}, {"looping": LOOPING})
    state = short_dir / "state"
    first = launch(config)
    wait_for(lambda: len(hook.requests) == 1, timeout_s=20, what="the first failure's message")
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
    assert [verify(r)["event"] for r in hook.requests] == ["failure"]
    rows = outbox(second)
    assert [(r["event"], r["state"]) for r in rows] == [("failure", "delivered")]


def test_service_exits_a_killed_supervisor_had_not_written_are_sent_once_after_its_restart(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    """A service's exit lives in memory until the history's writer commits its episode and rows;
    the notifications journal holds it meanwhile. Killed in between (here: the store locked, so
    the writer cannot commit), the next start writes what the journal holds, exactly once."""
    hook.start()
    config = write(short_dir, {"chat": webhook(hook)}, {"looping": {**LOOPING, "autostart": False}})
    state = short_dir / "state"
    first = launch(config)
    blocker = sqlite3.connect(state / "history.db", timeout=10, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the history's writer waits: rows stay in memory
    try:
        first.client.call("start", name="looping")
        wait_for(
            lambda: sum(e["kind"] == "exited" for e in first.client.call("events", service="looping")["events"]) >= 3,
            what="exits seen while the store is locked",
        )
        assert outbox(first) == [] and episode(state, "looping") == (0, 0, 0)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    (journal,) = state.glob("notify-*.journal")
    journaled = len(journal.read_text().splitlines()) - 1  # after the header: one line per exit
    assert journaled >= 3

    second = launch(config)  # the service stays stopped: every exit below is the first start's
    wait_for(lambda: episode(state, "looping")[1] == journaled, what="the journaled exits counted")
    (row,) = wait_for(lambda: (rows := outbox(second)) and rows[0]["state"] == "delivered" and rows, what="delivery")
    assert row["event"] == "failure"
    (request,) = hook.requests
    assert (verify(request)["event"], verify(request)["count"]) == ("failure", 1)
    wait_for(lambda: not journal.exists(), what="the applied journal deleted")
    assert episode(state, "looping") == (1, journaled, journaled - 1)


def test_journaled_exits_already_in_the_store_are_not_counted_again_after_a_kill(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    config = write(short_dir, {"chat": webhook(hook)}, {"looping": {**LOOPING, "autostart": False}})
    state = short_dir / "state"
    first = launch(config)
    first.client.call("start", name="looping")
    wait_for(lambda: episode(state, "looping")[1] >= 3, what="failures counted")
    first.client.call("stop", name="looping")
    (journal,) = state.glob("notify-*.journal")

    def all_in() -> bool:
        return episode(state, "looping")[1] == len(journal.read_text().splitlines()) - 1

    wait_for(all_in, what="every journaled exit in the store")
    counted = episode(state, "looping")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)

    second = launch(config)
    wait_for(lambda: not journal.exists(), what="the earlier journal applied and deleted")
    assert episode(state, "looping") == counted, "its lines were in the store already: nothing counted twice"
    assert [r["event"] for r in outbox(second)] == ["failure"]


def test_a_service_failing_before_a_restart_that_runs_stable_after_it_sends_recovered(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    fixed = short_dir / "fixed"
    svc = {
        "command": ["sh", "-c", f"test -f {fixed} && exec sleep 1000; exit 1"],
        "backoff": "100ms",
        "backoff_max": "100ms",
        "stable_after": "1s",
        "notify": {"on": ["failure", "recovered"], "to": ["chat"], "min_interval": "5m"},
    }
    config = write(short_dir, {"chat": webhook(hook)}, {"web": svc})
    state = short_dir / "state"
    first = launch(config)
    wait_for(lambda: len(hook.requests) == 1 and episode(state, "web")[1] >= 3, what="a failing episode")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    fixed.touch()

    launch(config)  # the service starts and stays up: the episode opened before the restart closes
    wait_for(lambda: len(hook.requests) == 2, timeout_s=20, what="the recovery")
    recovered = verify(hook.requests[1])
    failures = episode(state, "web")[1]
    assert (recovered["event"], recovered["count"]) == ("recovered", failures)
    assert recovered["summary"].startswith(f"web: recovered after {failures} failures")
