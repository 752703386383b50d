"""The events stream: sequence numbers, a bounded replay ring, the PUB socket, the log.

Every event the supervisor emits gets the next sequence number (from 1, per
supervisor start), is kept in a ring of the most recent `capacity` events (for
`events --since SEQ`), goes to the listeners (metrics), to the log with its
service and kind, and out on the PUB socket under the topic `<service>.<kind>`.
PUB drops at its high-water mark, so a slow or absent subscriber never slows
the supervisor; a subscriber that notices a gap in `seq` asks for a replay.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import zmq
import zmq.asyncio

from supervise.protocol.codec import pack

log = logging.getLogger("supervise")

EVENT_VERSION = 1
RING_CAPACITY = 4096
"""Recent events kept for replay; at a few hundred bytes each, about a megabyte at most."""

MAX_REPLAY = 1000
"""Events returned by one `events` command; ask again from the last `seq` for more."""

WARNING_KINDS = frozenset({"hung", "fatal", "killed", "spawn_failed", "start_timeout", "memory_exceeded"})
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_XPUB = int(zmq.XPUB)

Event = dict[str, Any]
Listener = Callable[[str, str, Mapping[str, object]], None]


class EventLog:
    """Numbers, keeps, logs and publishes events.

    Args:
        capacity: how many recent events `since` can replay.
        wall: the wall clock for `ts` (seconds since the epoch).
    """

    def __init__(self, *, capacity: int = RING_CAPACITY, wall: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.instance = os.urandom(4).hex()  # tells a subscriber that seq restarted with a new supervisor
        self.seq = 0
        self.published = 0
        self.dropped = 0
        self._wall = wall
        self._ring: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._sock: zmq.Socket[bytes] | None = None
        self._xpub = False  # the socket tells its subscriptions: events nobody subscribed to are not sent
        self._subscribed: set[bytes] = set()  # the topic prefixes subscribed to (an XPUB socket's)
        self.listeners: list[Listener] = []

    def attach(self, sock: zmq.asyncio.Socket | None) -> None:
        """Publish on `sock` from now on (None: stop publishing, e.g. at close).

        Events go out through a plain shadow of the socket: a send that never waits needs
        none of the asyncio socket's futures (two events per run add up in a burst)."""
        self._sock = None if sock is None else zmq.Socket.shadow(sock.underlying)
        self._xpub = self._sock is not None and self._sock.get(zmq.TYPE) == _XPUB
        self._subscribed.clear()

    def emit(self, service: str, kind: str, detail: Mapping[str, object] | None = None, message: str = "") -> Event:
        """Record one event; returns it as published."""
        detail = detail or {}
        self.seq += 1
        event: Event = {
            "v": EVENT_VERSION,
            "seq": self.seq,
            "ts": self._wall(),
            "service": service,
            "kind": kind,
            **detail,
        }
        if message:
            event.setdefault("message", message)
        self._ring.append(event)
        _log_event(service, kind, detail, message)
        for listener in self.listeners:
            listener(service, kind, detail)
        if self._sock is not None:
            topic = f"{service}.{kind}".encode()
            if not self._wanted(topic):
                self.published += 1  # as a PUB socket drops it: sent, and nobody subscribed
                return event
            body = pack(event)  # before the first frame goes: nothing may fail between the two sends
            try:
                # Two frames, [topic, event]; sent as two sends with plain int flags, which spares
                # send_multipart's checks and its enum arithmetic on every event (two per run).
                self._sock.send(topic, _SNDMORE_NOBLOCK)
                self._sock.send(body, _NOBLOCK)
                self.published += 1
            except zmq.ZMQError:
                self.dropped += 1
        return event

    def _wanted(self, topic: bytes) -> bool:
        """Whether a subscriber would receive `topic` (always, on a plain PUB socket).

        An XPUB socket hands its subscriptions (`\\x01` + prefix) and unsubscriptions (`\\x00` +
        prefix; the last subscriber of it gone) to the application. They are read here before
        each event: asking for the socket's EVENTS has libzmq apply what its subscribers sent
        so far, as a send does before it filters, so an event is left out exactly when the
        socket would have dropped it, and is never packed or sent to nobody.
        """
        if not self._xpub:
            return True
        sock = self._sock
        assert sock is not None
        while cast(int, sock.get(_EVENTS)) & _POLLIN:
            try:
                message = sock.recv(_NOBLOCK)
            except zmq.ZMQError:
                break
            if message[:1] == b"\x01":
                self._subscribed.add(message[1:])
            elif message[:1] == b"\x00":
                self._subscribed.discard(message[1:])
        return any(topic.startswith(prefix) for prefix in self._subscribed)

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still in the ring (seq + 1 when it is empty)."""
        return self._ring[0]["seq"] if self._ring else self.seq + 1

    def since(self, seq: int, *, service: str | None = None, limit: int = MAX_REPLAY) -> dict[str, Any]:
        """Events after `seq` (oldest first), optionally of one service.

        Returns:
            `events`; `last_seq` (the newest seq overall: ask from here next time);
            `missed`, how many events after `seq` had already left the ring; `more`,
            true when `limit` cut the answer short (ask again from the last one returned).
        """
        missed = max(0, self.first_seq - seq - 1) if seq < self.seq else 0
        events: list[Event] = []
        more = False
        for event in self._ring:
            if event["seq"] <= seq or (service is not None and event["service"] != service):
                continue
            if len(events) >= limit:
                more = True
                break
            events.append(event)
        return {"events": events, "last_seq": self.seq, "missed": missed, "more": more, "instance": self.instance}


def _log_event(service: str, kind: str, detail: Mapping[str, object], message: str) -> None:
    if kind == "state":
        log.info(
            "%s: %s -> %s", service, detail.get("from"), detail.get("to"), extra={"service": service, "event": kind}
        )
    elif message:
        level = logging.WARNING if kind in WARNING_KINDS else logging.INFO
        log.log(level, "%s: %s", service, message, extra={"service": service, "event": kind})
