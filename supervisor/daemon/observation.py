"""One event the notifier hands to the history's writer, with what deciding about it needs.

Read on the event loop (the service's rule, its last error, its incarnation), so
that the decision, made on the writer's thread in the transaction that writes its
rows, touches nothing of the daemon's live state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """An event of `subject` under one of its rules: "own" (its `notify`) or "default"."""

    rule: str
    subject: str
    event: str  # a notification event, or "digest" for a due episode's digest
    fact: str  # the row ids' prefix: the run or the service's incarnation
    on: frozenset[str]
    min_interval_ms: int
    targets: tuple[str, ...]
    detail: Mapping[str, object] = field(default_factory=dict, hash=False)
    wall: datetime  # when it happened: the message's `time`
    last_error: str | None = None
    incarnation: int | None = None
    log_path: Path
    log_backups: int


def wall_ms(when: datetime) -> int:
    """Wall-clock milliseconds since the epoch: the episodes' time on SQLite."""
    return int(when.timestamp() * 1000)


def observation_to_json(obs: Observation) -> dict[str, Any]:
    """The observation as JSON values (for the journal)."""
    return {
        "rule": obs.rule,
        "subject": obs.subject,
        "event": obs.event,
        "fact": obs.fact,
        "on": sorted(obs.on),
        "min_interval_ms": obs.min_interval_ms,
        "targets": list(obs.targets),
        "detail": {k: v for k, v in obs.detail.items() if isinstance(v, (str, int, float, bool)) or v is None},
        "wall": obs.wall.isoformat(),
        "last_error": obs.last_error,
        "incarnation": obs.incarnation,
        "log_path": str(obs.log_path),
        "log_backups": obs.log_backups,
    }


def observation_from_json(data: Mapping[str, Any]) -> Observation:
    """The inverse of `observation_to_json`; KeyError, TypeError or ValueError for a value it did not write."""
    return Observation(
        rule=str(data["rule"]),
        subject=str(data["subject"]),
        event=str(data["event"]),
        fact=str(data["fact"]),
        on=frozenset(str(e) for e in data["on"]),
        min_interval_ms=int(data["min_interval_ms"]),
        targets=tuple(str(t) for t in data["targets"]),
        detail=dict(data["detail"]),
        wall=datetime.fromisoformat(data["wall"]),
        last_error=data["last_error"],
        incarnation=data["incarnation"],
        log_path=Path(data["log_path"]),
        log_backups=int(data["log_backups"]),
    )
