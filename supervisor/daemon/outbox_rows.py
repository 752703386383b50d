"""Notifications, the writing half: on the history's writer, in its transaction, from an
observation to the episode, the policy's decision and the outbox rows (one per channel)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from supervise.supervisor.core.alerts import Alert, due, observe
from supervise.supervisor.daemon.logtail import tail
from supervise.supervisor.daemon.notify_text import summary_of, text_of
from supervise.supervisor.daemon.observation import Observation, wall_ms
from supervise.supervisor.store.base import Notification, NotificationStore
from supervise.supervisor.store.episodes import EpisodeStore
from supervise.supervisor.store.journal_marks import JournalMarks

ERROR_LINES: Final = 10  # of a run's or service's error, in a message
OUTPUT_LINES: Final = 5  # of the service's log, in a message about a failure
_GOOD: Final = frozenset({"recovered", "success"})


class OutboxStore(NotificationStore, EpisodeStore, JournalMarks, Protocol):
    """What the notifier writes to: the outbox, the no-storm episodes, the journal's marks."""


class OutboxRows:
    """Decides and writes, on whichever thread calls (the history's writer, inside its transaction).

    `failing` is the notifier's hint of the subjects that may be in a failing episode: a
    closed episode is taken out of it here. `queued` counts the rows written.
    """

    def __init__(self, store: OutboxStore, failing: set[str]) -> None:
        self._store = store
        self.failing = failing
        self.queued = 0
        self._hostname = socket.gethostname()

    def decide(self, obs: Observation, *, mark: tuple[str, int] | None = None, check: bool = False) -> None:
        """On the writer's thread, in its transaction: the episode, the policy, the rows, and the
        journal's `mark` (journal, seq) when the event is journaled; with `check`, nothing when
        that mark is already in (a line of an earlier start's journal that did reach the store)."""
        if mark is not None and check and self._store.journal_mark(mark[0]) >= mark[1]:
            return
        episode, now_ms = self._store.take_episode(obs.rule, obs.subject, wall_ms(obs.wall))
        after, alerts = observe(
            episode, obs.subject, obs.event, on=obs.on, min_interval_ms=obs.min_interval_ms, now_ms=now_ms
        )
        if after != episode:
            self._store.put_episode(obs.rule, obs.subject, after)
        if not after.failing:
            self.failing.discard(obs.subject)
        for alert in alerts:
            self._write_alert(alert, obs)
        if mark is not None:
            self._store.put_journal_mark(*mark)

    def send_digest(self, obs: Observation) -> None:
        """On the writer's thread: the digest of a due episode, unless someone sent it meanwhile."""
        episode, now_ms = self._store.take_episode(obs.rule, obs.subject, wall_ms(obs.wall))
        after, alert = due(episode, obs.subject, now_ms)
        if alert is None:
            return
        self._store.put_episode(obs.rule, obs.subject, after)
        self._write_alert(alert, obs, fact=f"digest:{obs.rule}:{obs.subject}:{alert.tag}")

    def _write_alert(self, alert: Alert, obs: Observation, *, fact: str | None = None) -> None:
        payload = self._payload(alert, obs)
        log_path = obs.log_path if alert.event not in _GOOD else None
        self.write(payload, obs.targets, fact or obs.fact, log_path, obs.log_backups)
        self.queued += len(obs.targets)

    def write(
        self, payload: dict[str, Any], channels: tuple[str, ...], fact: str, log_path: Path | None, backups: int
    ) -> None:
        """On the notifier's thread: add the log's last lines, then one outbox row per channel."""
        output: list[str] = []
        if log_path is not None:
            try:
                output = [line[:300] for line in tail(log_path, OUTPUT_LINES, backups=backups).lines]
            except OSError:
                output = []
        payload["output_lines"] = output
        payload["text"] = text_of(payload)
        now = datetime.fromisoformat(payload["time"])
        for channel in channels:
            row_id = f"{fact}|{payload['event']}|{channel}"
            row = Notification(
                id=row_id,
                channel=channel,
                service=payload["service"],
                event=payload["event"],
                payload={**payload, "id": row_id},
                created_at=now,
                next_attempt_at=now,
            )
            self._store.add_notification(row)

    def _payload(self, alert: Alert, obs: Observation) -> dict[str, Any]:
        """The template variables of a message (SAMPLE_MESSAGE in config/notify.py lists them)."""
        detail, now = obs.detail, obs.wall
        error = detail.get("error") or detail.get("reason") or obs.last_error
        error_text = str(error) if error else ""
        run_id = detail.get("run_id")
        since = None if alert.failing_since_ms is None else datetime.fromtimestamp(alert.failing_since_ms / 1000, UTC)
        return {
            "service": obs.subject,
            "event": alert.event,
            "summary": summary_of(alert, detail, since, now),
            "error": error_text or None,
            "error_lines": error_text.splitlines()[:ERROR_LINES],
            "output_lines": [],
            "run_id": run_id,
            "state": detail.get("state"),
            "attempt": detail.get("attempt"),
            "incarnation": obs.incarnation,
            "count": alert.count,
            "counts": alert.counts,
            "digest": alert.event == "digest",
            "time": now.isoformat(),
            "since": since.isoformat() if since is not None else None,
            "host": self._hostname,
            "command": f"supervise runs {obs.subject}" if run_id else f"supervise logs {obs.subject}",
            "detail": {k: v for k, v in detail.items() if isinstance(v, (str, int, float, bool)) or v is None},
        }
