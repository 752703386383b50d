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
