"""Cluster mode: LISTEN/NOTIFY wake-ups for runs (docs/cluster.md).

A node that leaves a run for any node to claim -- queued because it has no free
slot (a one-shot come due, a re-run of a lost run), or queued again by the
leader's rescue -- sends `NOTIFY supervise_runs_<schema>, '<payload>'`, the
payload naming the node and the services whose runs wait (JSON
`{"node": …, "services": [… ] or null}`, null: any service). Every other node,
woken, looks for queued runs of those services after a random delay of up to
`WAKE_JITTER_S`, so the nodes woken by one notification do not all query at
the same instant, and at most once per `WAKE_GAP_S`. Polling at every
heartbeat (`renew_every`) stays as the safety net: a notification lost (the
listening connection dropped, the database restarted) delays a claim by at
most one renewal interval.

One thread and one connection per node carry both directions: the thread
LISTENs, and sends this node's notifications, at most one per `SEND_EVERY_S`
(a burst of runs queued at once makes one notification).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Final

import psycopg
from psycopg import sql

log = logging.getLogger("supervise.cluster")

SEND_EVERY_S: Final = 0.05  # notifications sent at most this often (and the listener's poll)
WAKE_JITTER_S: Final = 0.1  # a woken node looks after a random delay in [0, this]
WAKE_GAP_S: Final = 0.25  # and looks at most this often (a burst's notifications make few queries)
RECONNECT_S: Final = (0.5, 5.0)  # the listener's reconnect delay: first, most


def runs_channel(schema: str) -> str:
    """The NOTIFY channel of a schema's claimable runs (the payload is the sending node)."""
    return f"supervise_runs_{schema}"[:63]


class RunWaker:
    """Sends and receives this node's run wake-ups.

    Args:
        dsn: the cluster store's connection string.
        schema: its schema (names the channel).
        node: this node's name (its own notifications do not wake it).
        on_wake: called on the event loop, after the jitter, when another node left runs to claim,
            with the services whose runs wait (None: any).
        rng: for the jitter.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        node: str,
        on_wake: Callable[[set[str] | None], None],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.channel = runs_channel(schema)
        self.node = node
        self._on_wake = on_wake
        self._rng = rng or random.Random()  # nosec B311 # jitter, not a secret
        self._clock = clock
        self._outgoing = threading.Event()
        self._outgoing_lock = threading.Lock()
        self._outgoing_services: set[str] | None = set()  # None: any service
        self._waking: set[str] | None = set()  # services to look at when the timer fires (None: any)
        self._last_wake = float("-inf")
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self.sent = 0  # notifications sent
        self.woken = 0  # wake-ups acted on (after coalescing)
        self.listening = threading.Event()  # set while LISTEN is in effect

    def start(self) -> None:
        """Start listening (call on the event loop that `on_wake` runs on)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name="supervise-run-wake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop waking this node (on the event loop); `join` then waits for the thread."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def join(self, timeout_s: float = 3.0) -> None:
        """Wait for the thread to end (it notices `stop` within SEND_EVERY_S, or its connect timeout)."""
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def claimable(self, service: str | None = None) -> None:
        """Runs of `service` (None: of any) were left for any node to claim: notify the others
        soon (from any thread)."""
        with self._outgoing_lock:
            if service is None or self._outgoing_services is None:
                self._outgoing_services = None
            else:
                self._outgoing_services.add(service)
        self._outgoing.set()

    def _payload(self) -> str:
        with self._outgoing_lock:
            services, self._outgoing_services = self._outgoing_services, set()
        return json.dumps({"node": self.node, "services": None if services is None else sorted(services)})

    # -- the thread ----------------------------------------------------------------------------

    def _serve(self) -> None:
        delay = RECONNECT_S[0]
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=2,
                    keepalives=1,
                    keepalives_idle=1,
                    keepalives_interval=1,
                    keepalives_count=2,
                    application_name=f"supervise-wake:{self.node}"[:63],
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.listening.set()
                    delay = RECONNECT_S[0]
                    self.claimable()  # runs queued while not connected: say so now
                    while not self._stop.is_set():
                        if self._outgoing.is_set():
                            self._outgoing.clear()
                            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, self._payload()))
                            self.sent += 1
                        for note in conn.notifies(timeout=SEND_EVERY_S):
                            self._received(note.payload)
            except psycopg.Error as e:
                self.listening.clear()
                log.debug("cluster: run wake-ups interrupted (%s); polling covers them, reconnecting", e)
                self._stop.wait(delay)
                delay = min(RECONNECT_S[1], delay * 2)
        self.listening.clear()

    def _received(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            node, services = str(note["node"]), note["services"]
            wanted = None if services is None else {str(s) for s in services}
        except (ValueError, KeyError, TypeError):
            log.debug("cluster: ignoring a run wake-up with payload %r", payload[:200])
            return
        if node == self.node:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._schedule, wanted)
            except RuntimeError:
                pass  # the loop closed meanwhile

    # -- on the event loop ---------------------------------------------------------------------

    def _schedule(self, services: set[str] | None) -> None:
        if services is None or self._waking is None:
            self._waking = None
        else:
            self._waking |= services
        if self._timer is None and not self._stop.is_set() and self._loop is not None:
            gap = self._last_wake + WAKE_GAP_S - self._clock()
            self._timer = self._loop.call_later(max(gap, self._rng.uniform(0.0, WAKE_JITTER_S)), self._fire)

    def _fire(self) -> None:
        self._timer = None
        services, self._waking = self._waking, set()
        self._last_wake = self._clock()
        self.woken += 1
        try:
            self._on_wake(services)
        except Exception:
            log.exception("cluster: looking for runs after a wake-up failed; polling covers it")
