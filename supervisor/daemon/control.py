"""The control socket: a ROUTER that decodes, validates, dispatches and always replies.

Each request runs in its own task so a slow command (a stop that waits for the
worker to exit) never holds up a `status`. A bad request gets an error reply; a
bug in a handler becomes an `internal` error with a reference that is in the log.
Nothing here can take the supervisor down.

With read-only CURVE keys (docs/security.md), each request's ZAP User-Id (the
client's public key, from the frame metadata) is checked: a read-only key gets
`forbidden` for a command that changes state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import zmq
import zmq.asyncio

from supervise.protocol.codec import decode_request, encode_error, encode_reply, split_envelope
from supervise.protocol.errors import ErrorCode, ProtocolError, SuperviseError
from supervise.supervisor.core.errors import AlreadyRunning, ConfigError, InvalidTransition, ServiceNotFound
from supervise.supervisor.daemon.commands import Command, resolve
from supervise.supervisor.daemon.sockets import send_nowait

log = logging.getLogger("supervise.control")

MAX_IN_FLIGHT = 256
MAX_IN_FLIGHT_PER_PEER = 32  # one client's share, so that it cannot take every slot
BACKLOG = 64  # received requests held while small ones are served before large ones
LARGE_FRAME_BYTES = 64 * 1024  # decoding a frame this large can take milliseconds


LARGE_BYTES_PER_PEER_S = 2 * 1024 * 1024  # large frames one client may have decoded per second
LARGE_BYTES_BURST = 4 * 1024 * 1024


class _LargeFrameBudget:
    """A token bucket per client for the bytes of large frames: past it, a large frame is refused undecoded."""

    def __init__(self) -> None:
        self._buckets: dict[bytes, tuple[float, float]] = {}  # peer -> (tokens, at)

    def allow(self, peer: bytes, size: int, now: float) -> bool:
        tokens, at = self._buckets.get(peer, (LARGE_BYTES_BURST, now))
        tokens = min(LARGE_BYTES_BURST, tokens + (now - at) * LARGE_BYTES_PER_PEER_S)
        allowed = tokens >= size
        self._buckets[peer] = (tokens - size if allowed else tokens, now)
        if len(self._buckets) > 10_000:  # forget the oldest clients: identities are cheap
            for stale in list(self._buckets)[:5_000]:
                del self._buckets[stale]
        return allowed


class _Backlog:
    """Received, undecoded requests: small ones first, large ones in the order they came."""

    def __init__(self) -> None:
        self._small: collections.deque[tuple[list[bytes | memoryview], str | None]] = collections.deque()
        self._large: collections.deque[tuple[list[bytes | memoryview], str | None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._small) + len(self._large)

    def add(self, frames: list[bytes | memoryview], user: str | None) -> None:
        large = sum(len(f) for f in frames) > LARGE_FRAME_BYTES
        (self._large if large else self._small).append((frames, user))

    def next(self) -> tuple[list[bytes | memoryview], str | None]:
        return self._small.popleft() if self._small else self._large.popleft()


def error_code_for(error: SuperviseError) -> ErrorCode:
    if isinstance(error, ProtocolError):
        return error.code
    if isinstance(error, ServiceNotFound):
        return ErrorCode.NOT_FOUND
    if isinstance(error, ConfigError):
        return ErrorCode.BAD_ARGS
    if isinstance(error, (AlreadyRunning, InvalidTransition)):
        return ErrorCode.CONFLICT
    return ErrorCode.CONFLICT


class ControlServer:
    """Serves the control commands (`commands.COMMANDS`) on a bound ROUTER socket until closed.

    Each request's command is looked up once, in `_parse`; `dispatch` runs it.
    """

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        dispatch: Callable[[Command, dict[str, object]], Awaitable[object]],
        *,
        readonly: Mapping[str, str] | None = None,
    ) -> None:
        self._sock = sock
        self._dispatch = dispatch  # runs a resolved command: `command.handler(api, args)`
        self._readonly = readonly or None  # ZAP User-Id (Z85 public key) -> key name, of read-only keys
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_peer: dict[bytes, int] = {}  # requests in flight per ROUTER identity
        self._large = _LargeFrameBudget()
        self.rate_limited = 0  # large frames refused undecoded
        self.bad_requests = 0
        self.dropped_replies = 0
        self.forbidden = 0

    async def serve(self) -> None:
        backlog = _Backlog()
        while True:
            try:
                if not backlog:
                    backlog.add(*await self._receive())
                # Take in what is already waiting (without waiting), so that a small request
                # such as a ping is not stuck behind large frames queued by another client.
                while len(backlog) < BACKLOG and cast(int, self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    backlog.add(*await self._receive())
            except zmq.ZMQError:
                if self._sock.closed:
                    return
                raise
            self._handle(*backlog.next())
            # Let the handlers, heartbeats and timers run between two requests: a client
            # with many requests queued must not hold the loop while they are decoded.
            await asyncio.sleep(0)

    def _handle(self, frames: list[bytes | memoryview], user: str | None) -> None:
        received_envelope, body = split_envelope(frames)
        envelope = [bytes(f) for f in received_envelope]  # identities: small frames, already bytes
        size = sum(len(f) for f in body)
        peer = envelope[0] if envelope else b""
        if size > LARGE_FRAME_BYTES and not self._large.allow(peer, size, time.monotonic()):
            self.rate_limited += 1
            message = "too many large requests from this client; retry in a second"
            self._send(envelope, encode_error(None, ErrorCode.RATE_LIMITED, message))
            return
        try:
            request_id, command, args = self._parse(body)
        except SuperviseError as e:
            self._send(envelope, self._error_reply(e, None))
            return
        denied = self._denied(user, command)
        if denied is not None:
            self._send(envelope, encode_error(request_id, ErrorCode.FORBIDDEN, denied))
            return
        if len(self._tasks) >= MAX_IN_FLIGHT or self._per_peer.get(peer, 0) >= MAX_IN_FLIGHT_PER_PEER:
            self._send(
                envelope, encode_error(request_id, ErrorCode.RATE_LIMITED, "too many requests in flight; retry shortly")
            )
            return
        self._start(peer, envelope, request_id, command, args)

    def _start(
        self,
        peer: bytes,
        envelope: list[bytes],
        request_id: str | int,
        command: Command,
        args: dict[str, object],
    ) -> None:
        task = asyncio.create_task(self._run(envelope, request_id, command, args))
        self._tasks.add(task)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            left = self._per_peer.pop(peer, 1) - 1
            if left > 0:
                self._per_peer[peer] = left

        task.add_done_callback(done)

    async def _receive(self) -> tuple[list[bytes | memoryview], str | None]:
        """The next message, and its ZAP User-Id when read-only keys are configured."""
        parts = await self._sock.recv_multipart(copy=False)
        user = None
        if self._readonly is not None:
            try:
                user = parts[-1].get("User-Id")
            except zmq.ZMQError:  # no metadata: not a CURVE connection
                user = None
        # A large frame is not copied into a bytes object: most are refused undecoded, and copying
        # megabytes per frame (a fresh allocation each) is what made a flood of them costly.
        frames = [part.bytes if len(part) <= LARGE_FRAME_BYTES else part.buffer for part in parts]
        return frames, user if isinstance(user, str) else None

    def _denied(self, user: str | None, command: Command) -> str | None:
        """Why the key `user` may not run `command` (a read-only key, a state change), or None."""
        name = self._readonly.get(user) if self._readonly is not None and user is not None else None
        if name is None or not command.changes_state:
            return None
        self.forbidden += 1
        log.info('refused "%s" to read-only key %s', command.name, name)
        return f'command "{command.name}" needs a full-access key; key "{name}" is read-only'

    def _parse(self, body: list[bytes | memoryview]) -> tuple[str | int, Command, dict[str, object]]:
        """Decode and validate a request; raises ProtocolError with the code to reply."""
        request = decode_request(body)
        try:
            command, args = resolve(request.cmd, request.args)
            return request.id, command, args
        except ProtocolError as e:
            e.request_id = request.id
            raise

    async def _run(
        self, envelope: list[bytes], request_id: str | int, command: Command, args: dict[str, object]
    ) -> None:
        try:
            reply = encode_reply(request_id, await self._dispatch(command, args))
        except SuperviseError as e:
            reply = self._error_reply(e, request_id)
        except Exception:
            ref = os.urandom(3).hex()
            log.exception("internal error (ref %s) in command %s", ref, command.name)
            reply = encode_error(request_id, ErrorCode.INTERNAL, f"internal error (ref {ref}); see supervise log")
        self._send(envelope, reply)

    def _error_reply(self, error: SuperviseError, request_id: str | int | None) -> bytes:
        if isinstance(error, ProtocolError):
            self.bad_requests += 1
            if error.request_id is not None:
                request_id = error.request_id
            return encode_error(request_id, error.code, error.message)
        return encode_error(request_id, error_code_for(error), str(error))

    def _send(self, envelope: list[bytes], reply: bytes) -> None:
        error = send_nowait(self._sock, [*envelope, reply])
        if error is not None:
            # The client is gone or not reading: drop the reply rather than wait for it.
            self.dropped_replies += 1
            log.debug("dropped a control reply: %s", error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
