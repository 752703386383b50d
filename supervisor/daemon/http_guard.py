"""Limits on the HTTP endpoint's connections: how many, and how long each may take or idle.

aiohttp closes a keep-alive connection some time after a response, but waits
forever for the first request on a new connection and for the rest of a request
that arrives a byte at a time. Each such connection holds a file descriptor, and
a supervisor out of descriptors cannot spawn, log or accept its own workers. So
every connection goes through `ConnectionGuard`:

- at most `max_connections` at once; past that, a new connection is closed as
  soon as it is accepted (and the refusals are logged at most once a second);
- from the first byte of a request to the first byte of its response, at most
  `request_timeout_s` (headers and body together);
- with no request in progress and nothing left to send, at most `idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger("supervise")

MAX_CONNECTIONS: Final = 128
REQUEST_TIMEOUT_S: Final = 10.0
IDLE_TIMEOUT_S: Final = 10.0
_CHECK_EVERY_S: Final = 0.5


class ConnectionGuard:
    """Counts the endpoint's connections and wraps each one's protocol (see the module doc)."""

    def __init__(
        self,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.active = 0
        self.refused = 0
        self.timed_out = 0
        self._logged_at = 0.0
        self._refused_since_log = 0

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` around aiohttp's own."""

        def make() -> asyncio.Protocol:
            if self.active >= self.max_connections:
                return _Refused(self)
            return _Guarded(self, inner())

        return make

    def refuse(self) -> None:
        self.refused += 1
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            log.warning(
                "HTTP: %d connections open (the limit); refused %d new ones in the last second",
                self.active,
                self._refused_since_log,
            )
            self._logged_at, self._refused_since_log = now, 0


class _Refused(asyncio.Protocol):
    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.refuse()
        transport.abort()  # type: ignore[attr-defined]  # a server-side transport is a Transport


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's handler, watching when requests start and answers go out."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._request_since: float | None = None  # first byte of a request not yet answered
        self._active_at = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._guard.active += 1
        self._transport = transport
        self._inner.connection_made(_WatchedTransport(transport, self))  # type: ignore[arg-type]  # a proxy of it
        self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.active -= 1
        if self._timer is not None:
            self._timer.cancel()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._request_since is None:
            self._request_since = now
        self._active_at = now
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def answered(self) -> None:
        """The handler wrote (part of) a response: the request is no longer waiting on the client."""
        self._request_since = None
        self._active_at = time.monotonic()

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(_CHECK_EVERY_S, self._check)

    def _check(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = time.monotonic()
        if transport.get_write_buffer_size() > 0:
            self._active_at = now  # still sending to a slow reader: not idle
        late = self._request_since is not None and now - self._request_since > self._guard.request_timeout_s
        idle = self._request_since is None and now - self._active_at > self._guard.idle_timeout_s
        if late or idle:
            self._guard.timed_out += 1
            transport.close()
            return
        self._schedule()


class _WatchedTransport:
    """The transport aiohttp's handler sees: the real one, telling the guard when a response is written."""

    def __init__(self, transport: asyncio.Transport, guarded: _Guarded) -> None:
        self._transport = transport
        self._guarded = guarded

    def write(self, data: Any) -> None:
        self._guarded.answered()
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self._guarded.answered()
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
