"""When to notify, without storms: the pure policy behind notifications.

Per subject (a service) the `AlertGate` keeps an episode: the first bad event
(failure, retries_exhausted, timed_out, lost, missed, fatal) opens it and is
sent at once; further bad events are held and sent as one digest at most once
per `min_interval`, saying how many of each there were; a good event (a run
that succeeded, a service running stable again) closes the episode with one
`recovered` message that folds in whatever was still held. A `fatal` is sent
at once even inside an episode (it is the last word on a service). Successes
outside an episode are rate-limited the same way.

No clock is read here: every call takes `now_ms` (monotonic milliseconds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

__all__ = ["BAD", "GOOD", "Alert", "AlertGate"]

BAD: Final = frozenset({"failure", "retries_exhausted", "timed_out", "lost", "missed", "fatal"})
GOOD: Final = frozenset({"success", "recovered"})


@dataclass(frozen=True, slots=True)
class Alert:
    """A message to send: `event` is the kind, or "digest" for held events sent together.

    `count` is how many events the message stands for and `counts` how many of
    each kind; `tag` is unique per subject within one gate (for deduplication keys).
    """

    subject: str
    event: str
    count: int
    counts: dict[str, int]
    tag: str
    failing_since_ms: int | None = None  # when the episode began (None outside one)


@dataclass(slots=True)
class _Track:
    failing_since_ms: int | None = None
    episode: int = 0
    failures: int = 0  # bad events in this episode
    last_sent_ms: int | None = None
    held: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    min_interval_ms: int = 0


class AlertGate:
    """Decides which events become messages; one per supervisor, state in memory."""

    def __init__(self) -> None:
        self._tracks: dict[str, _Track] = {}

    def failing(self, subject: str) -> bool:
        """True while `subject` is in a failing episode."""
        track = self._tracks.get(subject)
        return track is not None and track.failing_since_ms is not None

    def observe(
        self, subject: str, event: str, *, on: Collection[str], min_interval_ms: int, now_ms: int
    ) -> list[Alert]:
        """Feed one event; returns the messages to send now (often none).

        Args:
            on: the events the subject's rule asks for; others still open and close episodes.
            min_interval_ms: the least time between two messages of one episode (fatal excepted).
        """
        if event not in BAD and event not in GOOD:
            raise ValueError(f"unknown event {event!r}; expected one of {sorted(BAD | GOOD)}")
        track = self._tracks.setdefault(subject, _Track())
        track.min_interval_ms = min_interval_ms
        if event in BAD:
            return self._bad(subject, track, event, on, now_ms)
        return self._good(subject, track, event, on, now_ms)

    def due(self, now_ms: int) -> list[Alert]:
        """Digests whose `min_interval` has passed since the subject's last message."""
        alerts = []
        for subject, track in self._tracks.items():
            if track.held and self._may_send(track, now_ms):
                alerts.append(self._send(subject, track, "digest", track.held, now_ms))
        return alerts

    def next_due_ms(self) -> int | None:
        """When `due` will next have something to return, or None when nothing is held."""
        times = [(t.last_sent_ms or 0) + t.min_interval_ms for t in self._tracks.values() if t.held]
        return min(times) if times else None

    # -- the rules -----------------------------------------------------------------------------

    def _bad(self, subject: str, track: _Track, event: str, on: Collection[str], now_ms: int) -> list[Alert]:
        opening = track.failing_since_ms is None
        if opening:
            track.failing_since_ms = now_ms
            track.episode += 1
            track.failures = 0
            track.held.clear()  # successes held outside the episode are not news any more
        track.failures += 1
        if event not in on:
            return []
        if opening or event == "fatal" or self._may_send(track, now_ms):
            counts = track.held + Counter({event: 1})
            kind = event if opening or event == "fatal" or not track.held else "digest"
            return [self._send(subject, track, kind, counts, now_ms)]
        track.held[event] += 1
        return []

    def _good(self, subject: str, track: _Track, event: str, on: Collection[str], now_ms: int) -> list[Alert]:
        if track.failing_since_ms is not None:
            failures, since = track.failures, track.failing_since_ms
            track.failing_since_ms = None
            held = Counter(track.held)
            track.held.clear()
            if "recovered" not in on:
                return []
            alert = self._send(subject, track, "recovered", held, now_ms, count=failures, since=since)
            return [alert]
        if event != "success" or "success" not in on:
            return []
        if self._may_send(track, now_ms):
            return [self._send(subject, track, "success", track.held + Counter(success=1), now_ms)]
        track.held["success"] += 1
        return []

    @staticmethod
    def _may_send(track: _Track, now_ms: int) -> bool:
        return track.last_sent_ms is None or now_ms - track.last_sent_ms >= track.min_interval_ms

    @staticmethod
    def _send(
        subject: str,
        track: _Track,
        kind: str,
        counts: Counter[str],
        now_ms: int,
        *,
        count: int | None = None,
        since: int | None = None,
    ) -> Alert:
        snapshot = {k: n for k, n in counts.items() if n > 0}  # before clear(): counts may be track.held
        track.last_sent_ms = now_ms
        track.sent += 1
        track.held.clear()
        total = sum(snapshot.values()) if count is None else count
        tag = f"e{track.episode}.m{track.sent}"
        return Alert(subject, kind, total, snapshot, tag, since if since is not None else track.failing_since_ms)
