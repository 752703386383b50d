"""Control-channel clients: `Client` (blocking) and `AsyncClient` (asyncio).

Both speak DEALER to the supervisor's ROUTER, one msgpack frame per request,
and wait for the reply whose id matches under a deadline, so they never hang.
On a timeout the socket is closed (LINGER=0) and reopened, the zguide's Lazy
Pirate: an undelivered request is dropped instead of reaching the supervisor
late, and a late reply goes to a socket that no longer exists.

A client is not thread-safe: use one per thread (or per event loop).

Over `tcp://`, a supervisor that uses CURVE (docs/security.md) needs the
client's key pair and the supervisor's public key: pass `curve_key` (the
client's NAME.key_secret file) and `server_key` (the supervisor's public key
file). A key the supervisor does not know is refused during the handshake: the
request never arrives and the call ends in `ClientTimeout`.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import zmq

from supervise.protocol.codec import decode_reply, encode_request
from supervise.protocol.curve import ClientKeys, apply_client_keys, load_client_keys
from supervise.protocol.errors import (
    ClientTimeout,
    DecodeError,
    ErrorCode,
    ProtocolError,
)
from supervise.protocol.limits import REPLY_LIMITS, REQUEST_LIMITS
from supervise.protocol.messages import Reply

if TYPE_CHECKING:
    import asyncio

    import zmq.asyncio


class _ClientBase:
    """What both clients share: request ids, framing, and matching replies to requests."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        curve_key: str | os.PathLike[str] | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._keys: ClientKeys | None = None
        if (curve_key is None) != (server_key is None):
            raise ValueError(
                "curve_key (this client's NAME.key_secret) and server_key (the supervisor's public key) go together"
            )
        if curve_key is not None and server_key is not None:
            if not endpoint.startswith("tcp://"):
                raise ValueError(f"CURVE keys are for tcp:// endpoints; {endpoint} is protected by file permissions")
            self._keys = load_client_keys(curve_key, server_key)  # KeyFileError (a ValueError) names the file
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)
        self._closed = False

    def _prepare(self, cmd: str, args: Mapping[str, object] | None, retries: int) -> tuple[str, bytes]:
        """A fresh request id (random prefix + counter, e.g. "3f9a1c2e-17") and the frame."""
        if self._closed:
            raise RuntimeError(f"this client of {self.endpoint} is closed; create a new one")
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        request_id = f"{self._prefix}-{next(self._counter)}"
        frame = encode_request(request_id, cmd, args)
        if len(frame) > REQUEST_LIMITS.max_frame_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"{cmd}: request of {len(frame)} bytes exceeds the supervisor's limit of "
                f"{REQUEST_LIMITS.max_frame_bytes} bytes; send less per request",
            )
        return request_id, frame

    @staticmethod
    def _match(frames: list[bytes], request_id: str) -> Reply | None:
        """The reply in `frames` if it answers `request_id`; None for a stale one.

        A reply with id nil answers the request in flight: the server could not
        read its id. A leading empty frame (a server that treats us as REQ) is
        tolerated.
        """
        if len(frames) == 2 and frames[0] == b"":
            frames = frames[1:]
        if len(frames) != 1:
            raise DecodeError(ErrorCode.MALFORMED, f"reply must be exactly 1 frame, got {len(frames)}")
        reply = decode_reply(frames[0])
        if reply.id is None or reply.id == request_id:
            return reply
        return None

    def _timeout_s(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self.timeout_s
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        return timeout_s

    def _configure_and_connect(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, REPLY_LIMITS.max_frame_bytes)
        if self._keys is not None:
            apply_client_keys(sock, self._keys)
        sock.connect(self.endpoint)


def _target(name: str | None, all: bool, extra: Mapping[str, object]) -> dict[str, object]:
    """Arguments of a command aimed at one service (`name`) or every one (`all`)."""
    args = dict(extra)
    if name is not None:
        args["name"] = name
    if all:
        args["all"] = True
    return args


def _status_args(name: str | None, detail: bool) -> dict[str, object]:
    return _target(name, False, {"detail": True} if detail else {})


def _remaining_ms(deadline: float) -> int:
    """Milliseconds left until `deadline`, rounded up so a wait never ends early."""
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


def _poll_until(sock: zmq.Socket[Any], flag: int, deadline: float) -> bool:
    """Wait until `sock` is ready for `flag` (True) or `deadline` passes (False)."""
    while True:
        if sock.poll(_remaining_ms(deadline), flag):
            return True
        if time.monotonic() >= deadline:
            return False


async def _apoll_until(poller: zmq.asyncio.Poller, deadline: float) -> bool:
    """Wait until the poller's one socket is ready (True) or `deadline` passes (False)."""
    while True:
        if await poller.poll(_remaining_ms(deadline)):
            return True
        if time.monotonic() >= deadline:
            return False


R = TypeVar("R")


class _Commands(Generic[R]):
    """The named commands, written once for both clients.

    Each returns what the client's `request` returns: the result for `Client`, an
    awaitable of it for `AsyncClient`. A new command is added here, once.
    """

    def request(
        self, cmd: str, args: Mapping[str, object] | None = None, *, retries: int = 0, timeout_s: float | None = None
    ) -> R:
        raise NotImplementedError

    def call(self, cmd: str, /, *, retries: int = 0, **args: object) -> R:
        """Run `cmd` with keyword `args` on the supervisor and return its result.

        Args:
            cmd: the command name.
            retries: resend this many times after a timeout; only for idempotent
                commands (an argument named "retries" needs `request`).
            **args: the command's arguments.

        Raises:
            RemoteError: the supervisor answered with an error (its code and message).
            ClientTimeout: no reply within `timeout_s`, on every attempt.
            DecodeError: the reply is not valid for this protocol version.
            ProtocolError: the request is over the supervisor's size limit (TOO_LARGE).
        """
        return self.request(cmd, args, retries=retries)

    def ping(self, *, retries: int = 0) -> R:
        """Check that the supervisor answers; returns what its `ping` returns."""
        return self.request("ping", retries=retries)

    def status(self, name: str | None = None, *, detail: bool = False, retries: int = 0) -> R:
        """Status of service `name`, or of every service; `detail` adds configuration facts and counters."""
        return self.request("status", _status_args(name, detail), retries=retries)

    def start(self, name: str | None = None, *, all: bool = False, **args: object) -> R:
        """Start service `name`, or every service with `all=True`."""
        return self.request("start", _target(name, all, args))

    def stop(self, name: str | None = None, *, all: bool = False, **args: object) -> R:
        """Stop service `name`, or every service with `all=True`."""
        return self.request("stop", _target(name, all, args))

    def restart(self, name: str | None = None, *, all: bool = False, **args: object) -> R:
        """Restart service `name`, or every service with `all=True`."""
        return self.request("restart", _target(name, all, args))

    def pause(self, name: str | None = None, *, all: bool = False, **args: object) -> R:
        """Pause service `name` (no new runs or restarts), or every one with `all=True`."""
        return self.request("pause", _target(name, all, args))

    def resume(self, name: str | None = None, *, all: bool = False, **args: object) -> R:
        """Resume paused service `name`, or every one with `all=True`."""
        return self.request("resume", _target(name, all, args))

    def shutdown(self) -> R:
        """Ask the supervisor to stop every service and exit."""
        return self.request("shutdown")


class Client(_ClientBase, _Commands[object]):
    """A blocking client of the control channel.

    Args:
        endpoint: the supervisor's control endpoint, e.g. `ipc:///run/supervise/control.sock`.
        timeout_s: how long each attempt waits for its reply.
        context: the ZeroMQ context; the process-wide one by default.
        curve_key: for a `tcp://` supervisor with CURVE: this client's secret key file.
        server_key: with `curve_key`: the supervisor's public key file.

    Example:
        with Client("ipc:///run/supervise/control.sock") as client:
            print(client.status("web"))
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 5.0,
        context: zmq.Context[Any] | None = None,
        curve_key: str | os.PathLike[str] | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(endpoint, timeout_s, curve_key, server_key)
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = None

    def request(
        self,
        cmd: str,
        args: Mapping[str, object] | None = None,
        *,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> object:
        """Like `call`, with the arguments as a mapping and an optional per-call timeout.

        Every attempt resends the same request, id included, on a fresh socket, so
        a supervisor that deduplicates ids recognises a retry.
        """
        request_id, frame = self._prepare(cmd, args, retries)
        wait_s = self._timeout_s(timeout_s)
        for _ in range(retries + 1):
            reply = self._attempt(request_id, frame, wait_s)
            if reply is not None:
                return reply.unwrap()
        raise ClientTimeout(self.endpoint, wait_s, attempts=retries + 1)

    def _attempt(self, request_id: str, frame: bytes, wait_s: float) -> Reply | None:
        """Send once and wait for the answer; None (after reopening the socket) on timeout."""
        sock = self._open_socket()
        deadline = time.monotonic() + wait_s
        try:
            try:
                sock.send(frame, zmq.NOBLOCK)  # a connected DEALER takes it at once
            except zmq.Again:
                if not _poll_until(sock, zmq.POLLOUT, deadline):
                    self._reset()
                    return None
                sock.send(frame, zmq.NOBLOCK)
            while _poll_until(sock, zmq.POLLIN, deadline):
                reply = self._match(sock.recv_multipart(zmq.NOBLOCK), request_id)
                if reply is not None:
                    return reply
        except BaseException:
            self._reset()  # whatever happened, a late reply must not meet the next call
            raise
        self._reset()
        return None

    def _open_socket(self) -> zmq.Socket[Any]:
        if self._socket is None:
            self._socket = self._context.socket(zmq.DEALER)
            self._configure_and_connect(self._socket)
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket; the client cannot be used afterwards. Idempotent."""
        self._reset()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_ClientBase, _Commands[Coroutine[Any, Any, object]]):
    """The asyncio twin of `Client`: the same methods, awaited.

    Calls on one `AsyncClient` take turns (each waits for the socket, then has its
    own deadline); open several clients to have requests in flight in parallel.

    Example:
        async with AsyncClient("ipc:///run/supervise/control.sock") as client:
            print(await client.status())
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 5.0,
        context: zmq.asyncio.Context | None = None,
        curve_key: str | os.PathLike[str] | None = None,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        import asyncio

        import zmq.asyncio  # here, so that importing Client does not import asyncio

        super().__init__(endpoint, timeout_s, curve_key, server_key)
        self._context: zmq.asyncio.Context = context if context is not None else zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._lock: asyncio.Lock = asyncio.Lock()

    async def request(
        self,
        cmd: str,
        args: Mapping[str, object] | None = None,
        *,
        retries: int = 0,
        timeout_s: float | None = None,
    ) -> object:
        """Like `call`, with the arguments as a mapping; see `Client.request`."""
        request_id, frame = self._prepare(cmd, args, retries)
        wait_s = self._timeout_s(timeout_s)
        async with self._lock:
            for _ in range(retries + 1):
                reply = await self._attempt(request_id, frame, wait_s)
                if reply is not None:
                    return reply.unwrap()
        raise ClientTimeout(self.endpoint, wait_s, attempts=retries + 1)

    async def _attempt(self, request_id: str, frame: bytes, wait_s: float) -> Reply | None:
        import zmq.asyncio

        sock = self._open_socket()
        deadline = time.monotonic() + wait_s
        # A Poller, not sock.poll(timeout, flags): pyzmq's stub for the latter is wrong.
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLOUT)
        try:
            if not await _apoll_until(poller, deadline):
                self._reset()
                return None
            await sock.send(frame, zmq.NOBLOCK)
            poller.modify(sock, zmq.POLLIN)
            while await _apoll_until(poller, deadline):
                reply = self._match(await sock.recv_multipart(zmq.NOBLOCK), request_id)
                if reply is not None:
                    return reply
        except BaseException:  # including cancellation
            self._reset()
            raise
        self._reset()
        return None

    def _open_socket(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            self._socket = self._context.socket(zmq.DEALER)
            self._configure_and_connect(self._socket)
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket; the client cannot be used afterwards. Idempotent."""
        self._reset()
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
