"""When to notify, without storms: the pure policy behind notifications.

Per subject (a service, under one rule) an `Episode` is kept: the first bad event
(failure, retries_exhausted, timed_out, lost, missed, fatal) opens it and is
sent at once; further bad events are held and sent as one digest at most once
per `min_interval`, saying how many of each there were; a good event (a run
that succeeded, a service running stable again) closes the episode with one
`recovered` message that folds in whatever was still held. A `fatal` is sent
at once even inside an episode (it is the last word on a service). Successes
outside an episode are rate-limited the same way.

`observe` and `due` are pure functions of an episode and the time: the daemon
keeps episodes in the store and calls them inside the transaction that writes
the episode back with the messages it causes. `AlertGate` keeps episodes in a
dict, for callers without a store. No clock is read here: every call takes
`now_ms` (milliseconds of one clock; the store's wall clock in the daemon).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

__all__ = ["BAD", "GOOD", "Alert", "AlertGate", "Episode", "due", "observe"]

BAD: Final = frozenset({"failure", "retries_exhausted", "timed_out", "lost", "missed", "fatal"})
GOOD: Final = frozenset({"success", "recovered"})


@dataclass(frozen=True, slots=True)
class Alert:
    """A message to send: `event` is the kind, or "digest" for held events sent together.

    `count` is how many events the message stands for and `counts` how many of
    each kind; `tag` is unique per subject as long as its episode is kept (for
    deduplication keys).
    """

    subject: str
    event: str
    count: int
    counts: dict[str, int]
    tag: str
    failing_since_ms: int | None = None  # when the episode began (None outside one)


@dataclass(frozen=True, slots=True)
class Episode:
    """What the policy remembers about one subject between events.

    `number` counts the episodes opened so far and `sent` the messages sent so far
    (both only grow: they make `Alert.tag`); `failures` counts the bad events of the
    open episode; `held` the events counted but not sent yet.
    """

    number: int = 0
    failing_since_ms: int | None = None
    failures: int = 0
    last_sent_ms: int | None = None
    held: Mapping[str, int] = field(default_factory=dict, hash=False)
    sent: int = 0
    min_interval_ms: int = 0

    @property
    def failing(self) -> bool:
        """True while a failing episode is open."""
        return self.failing_since_ms is not None

    @property
    def held_total(self) -> int:
        """How many events are held for the next message."""
        return sum(self.held.values())

    def due_at_ms(self) -> int | None:
        """When `due` will have a digest to send, or None when nothing is held."""
        return (self.last_sent_ms or 0) + self.min_interval_ms if self.held_total else None


def observe(
    episode: Episode, subject: str, event: str, *, on: Collection[str], min_interval_ms: int, now_ms: int
) -> tuple[Episode, list[Alert]]:
    """Feed one event: the episode after it, and the messages to send now (often none).

    Args:
        on: the events the subject's rule asks for; others still open and close episodes.
        min_interval_ms: the least time between two messages of one episode (fatal excepted).
    Raises:
        ValueError: an event that is neither bad nor good.
    """
    if event not in BAD and event not in GOOD:
        raise ValueError(f"unknown event {event!r}; expected one of {sorted(BAD | GOOD)}")
    episode = replace(episode, min_interval_ms=min_interval_ms)
    if event in BAD:
        return _bad(episode, subject, event, on, now_ms)
    return _good(episode, subject, event, on, now_ms)


def due(episode: Episode, subject: str, now_ms: int) -> tuple[Episode, Alert | None]:
    """The digest of what is held, once `min_interval` has passed since the last message."""
    if not episode.held_total or not _may_send(episode, now_ms):
        return episode, None
    return _send(episode, subject, "digest", Counter(episode.held), now_ms)


# -- the rules -----------------------------------------------------------------------------------


def _bad(episode: Episode, subject: str, event: str, on: Collection[str], now_ms: int) -> tuple[Episode, list[Alert]]:
    opening = episode.failing_since_ms is None
    if opening:
        # successes held outside the episode are not news any more
        episode = replace(episode, failing_since_ms=now_ms, number=episode.number + 1, failures=0, held={})
    episode = replace(episode, failures=episode.failures + 1)
    if event not in on:
        return episode, []
    if opening or event == "fatal" or _may_send(episode, now_ms):
        counts = Counter(episode.held) + Counter({event: 1})
        kind = event if opening or event == "fatal" or not episode.held_total else "digest"
        episode, alert = _send(episode, subject, kind, counts, now_ms)
        return episode, [alert]
    return replace(episode, held={**episode.held, event: episode.held.get(event, 0) + 1}), []


def _good(episode: Episode, subject: str, event: str, on: Collection[str], now_ms: int) -> tuple[Episode, list[Alert]]:
    if episode.failing_since_ms is not None:
        failures, since, held = episode.failures, episode.failing_since_ms, Counter(episode.held)
        episode = replace(episode, failing_since_ms=None, held={})
        if "recovered" not in on:
            return episode, []
        episode, alert = _send(episode, subject, "recovered", held, now_ms, count=failures, since=since)
        return episode, [alert]
    if event != "success" or "success" not in on:
        return episode, []
    if _may_send(episode, now_ms):
        episode, alert = _send(episode, subject, "success", Counter(episode.held) + Counter(success=1), now_ms)
        return episode, [alert]
    return replace(episode, held={**episode.held, "success": episode.held.get("success", 0) + 1}), []


def _may_send(episode: Episode, now_ms: int) -> bool:
    return episode.last_sent_ms is None or now_ms - episode.last_sent_ms >= episode.min_interval_ms


def _send(
    episode: Episode,
    subject: str,
    kind: str,
    counts: Counter[str],
    now_ms: int,
    *,
    count: int | None = None,
    since: int | None = None,
) -> tuple[Episode, Alert]:
    snapshot = {k: n for k, n in counts.items() if n > 0}
    sent = episode.sent + 1
    episode = replace(episode, last_sent_ms=now_ms, sent=sent, held={})
    total = sum(snapshot.values()) if count is None else count
    tag = f"e{episode.number}.m{sent}"
    return episode, Alert(subject, kind, total, snapshot, tag, since if since is not None else episode.failing_since_ms)


class AlertGate:
    """`observe` and `due` over episodes kept in memory, one per subject."""

    def __init__(self) -> None:
        self.episodes: dict[str, Episode] = {}

    def failing(self, subject: str) -> bool:
        """True while `subject` is in a failing episode."""
        episode = self.episodes.get(subject)
        return episode is not None and episode.failing

    def observe(
        self, subject: str, event: str, *, on: Collection[str], min_interval_ms: int, now_ms: int
    ) -> list[Alert]:
        """Feed one event (see the module function `observe`); returns the messages to send now."""
        episode, alerts = observe(
            self.episodes.get(subject, Episode()), subject, event, on=on, min_interval_ms=min_interval_ms, now_ms=now_ms
        )
        self.episodes[subject] = episode
        return alerts

    def due(self, now_ms: int) -> list[Alert]:
        """Digests whose `min_interval` has passed since the subject's last message."""
        alerts = []
        for subject, episode in self.episodes.items():
            self.episodes[subject], alert = due(episode, subject, now_ms)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def next_due_ms(self) -> int | None:
        """When `due` will next have something to return, or None when nothing is held."""
        times = [t for e in self.episodes.values() if (t := e.due_at_ms()) is not None]
        return min(times) if times else None
