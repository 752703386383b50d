"""Non-blocking sends on zmq.asyncio sockets, for a loop that must never wait on a peer."""

from __future__ import annotations

import zmq
import zmq.asyncio


def send_nowait(sock: zmq.asyncio.Socket, frames: list[bytes]) -> zmq.ZMQError | None:
    """Send now or not at all; returns the error instead of raising it.

    With NOBLOCK, pyzmq's asyncio socket tries the send at once and returns an
    already-finished future; reading its exception here keeps a refused send
    (a peer at its high-water mark, or gone with ROUTER_MANDATORY) from
    surfacing later as "exception was never retrieved".
    """
    future = sock.send_multipart(frames, flags=zmq.NOBLOCK)
    error = future.exception() if future.done() else None
    if not future.done():  # cannot happen with NOBLOCK; never leave a send pending
        future.cancel()
    return error if isinstance(error, zmq.ZMQError) else None
