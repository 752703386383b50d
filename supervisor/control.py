"""The control socket: a ROUTER that decodes, validates, dispatches and always replies.

Each request runs in its own task so a slow command (a stop that waits for the
worker to exit) never holds up a `status`. A bad request gets an error reply; a
bug in a handler becomes an `internal` error with a reference that is in the log.
Nothing here can take the supervisor down.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from supervise.protocol.codec import decode_request, encode_error, encode_reply
from supervise.protocol.errors import ErrorCode, ProtocolError, SuperviseError
from supervise.supervisor.commands import COMMANDS, unknown_command
from supervise.supervisor.errors import AlreadyRunning, ConfigError, InvalidTransition, ServiceNotFound

log = logging.getLogger("supervise.control")

MAX_IN_FLIGHT = 256
REPLY_SEND_TIMEOUT_S = 1.0


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
    """Serves `COMMANDS` on a bound ROUTER socket until closed."""

    def __init__(self, sock: zmq.asyncio.Socket, call: Callable[[str, dict[str, object]], Awaitable[object]]) -> None:
        self._sock = sock
        self._call = call
        self._tasks: set[asyncio.Task[None]] = set()
        self.bad_requests = 0
        self.dropped_replies = 0

    async def serve(self) -> None:
        while True:
            try:
                frames = await self._sock.recv_multipart()
            except zmq.ZMQError:
                if self._sock.closed:
                    return
                raise
            task = asyncio.create_task(self._handle(frames, overloaded=len(self._tasks) >= MAX_IN_FLIGHT))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, frames: list[bytes], *, overloaded: bool) -> None:
        if overloaded:
            reply = encode_error(None, ErrorCode.CONFLICT, "too many requests in flight; retry shortly")
        else:
            reply = await self.respond(frames[1:])
        await self._send_reply(frames, reply)

    async def respond(self, body: list[bytes]) -> bytes:
        """The reply frame for a request's frames (without the routing identity)."""
        if len(body) >= 2 and body[0] == b"":
            body = body[1:]  # a REQ socket's empty delimiter
        request_id: Any = None
        try:
            request = decode_request(body)
            request_id = request.id
            command = COMMANDS.get(request.cmd)
            if command is None:
                raise unknown_command(request.cmd)
            args = command.validate(request.args)
            return encode_reply(request_id, await self._call(command.name, args))
        except SuperviseError as e:
            self.bad_requests += isinstance(e, ProtocolError)
            if isinstance(e, ProtocolError) and e.request_id is not None:
                request_id = e.request_id
            message = e.message if isinstance(e, ProtocolError) else str(e)
            return encode_error(request_id, error_code_for(e), message)
        except Exception:
            ref = secrets.token_hex(3)
            log.exception("internal error (ref %s) while handling a control request", ref)
            return encode_error(request_id, ErrorCode.INTERNAL, f"internal error (ref {ref}); see supervise log")

    async def _send_reply(self, frames: list[bytes], reply: bytes) -> None:
        envelope = frames[:1]
        if len(frames) >= 3 and frames[1] == b"":
            envelope = frames[:2]
        try:
            await asyncio.wait_for(self._sock.send_multipart([*envelope, reply]), REPLY_SEND_TIMEOUT_S)
        except (zmq.ZMQError, TimeoutError) as e:
            # The client is gone or not reading: drop the reply rather than block the loop.
            self.dropped_replies += 1
            log.debug("dropped a control reply: %s", e)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
