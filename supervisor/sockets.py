"""Non-blocking sends on zmq.asyncio sockets, for a loop that must never wait on a peer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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


_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


class Inbox:
    """A plain (not asyncio) socket read from the event loop, without a future per message.

    For the worker channel, where hundreds of heartbeats a second arrive: the loop
    watches the socket's FD and drains every waiting message in one callback.
    ZeroMQ's FD is edge-triggered and a send can consume the edge, so after every
    send the socket's events are checked again.
    """

    BATCH = 1000  # messages per callback before yielding to the rest of the loop

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[bytes], on_frames: Callable[[list[bytes]], None]) -> None:
        self._loop = loop
        self._sock = sock
        self._on_frames = on_frames
        self._fd: int = sock.getsockopt(zmq.FD)
        self._scheduled = False
        loop.add_reader(self._fd, self._drain)
        self._schedule()  # messages may have arrived before the reader was added

    def send(self, frames: list[bytes]) -> bool:
        """Send now or drop (a peer not connected, or at its high-water mark); True if sent."""
        try:
            self._sock.send_multipart(frames, _NOBLOCK)
            return True
        except zmq.ZMQError:
            return False
        finally:
            self._schedule()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)

    def _schedule(self) -> None:
        if not self._scheduled and self._sock.getsockopt(zmq.EVENTS) & _POLLIN:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        sock = self._sock
        try:
            # Asking for EVENTS is cheaper than a receive that ends in an Again exception.
            for _ in range(self.BATCH):
                if not sock.getsockopt(zmq.EVENTS) & _POLLIN:
                    return
                self._on_frames(sock.recv_multipart(_NOBLOCK))
        except zmq.ZMQError:
            return  # closed under us at shutdown
        self._schedule()  # more than a batch waiting: let other callbacks run first
