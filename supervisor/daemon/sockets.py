"""Non-blocking sends on zmq.asyncio sockets, for a loop that must never wait on a peer."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import cast

import zmq
import zmq.asyncio


def send_nowait(sock: zmq.asyncio.Socket, frames: list[bytes]) -> zmq.ZMQError | None:
    """Send now or not at all; returns the error instead of raising it.

    With NOBLOCK, pyzmq's asyncio socket tries the send at once and returns an
    already-finished future; reading its exception here keeps a refused send
    (a peer at its high-water mark, or gone with ROUTER_MANDATORY) from
    surfacing later as "exception was never retrieved".
    """
    future = cast("asyncio.Future[object]", sock.send_multipart(frames, flags=zmq.NOBLOCK))
    error = future.exception() if future.done() else None
    if not future.done():  # cannot happen with NOBLOCK; never leave a send pending
        future.cancel()
    return error if isinstance(error, zmq.ZMQError) else None


_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


class Inbox:
    """A plain (not asyncio) socket read from the event loop, without a future per message.

    For the worker channel, where hundreds of heartbeats a second arrive: the loop
    watches the socket's FD and drains every waiting message in one callback.
    ZeroMQ's FD is edge-triggered and a send can consume the edge, so after every
    send the socket's events are checked again.

    `min_gap_s` batches a busy channel: a message that arrives within `min_gap_s`
    of the last drain waits (with the FD unwatched) until that gap has passed, so
    the loop wakes at most 1/min_gap_s times a second however many messages come;
    a message on a quiet channel is read at once. `around`, if given, is entered
    around each drain (the run history's writer waits meanwhile: `QueuedStore.held`).
    """

    BATCH = 1000  # messages per callback before yielding to the rest of the loop

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[bytes],
        on_frames: Callable[[list[bytes]], None],
        *,
        min_gap_s: float = 0.0,
        around: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._on_frames = on_frames
        self._around = around or contextlib.nullcontext
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._gap = min_gap_s
        self._last_drain = -math.inf
        self._scheduled = False
        self._closed = False
        self._deferred: asyncio.TimerHandle | None = None  # set while the FD is unwatched
        loop.add_reader(self._fd, self._on_readable)
        self._schedule()  # messages may have arrived before the reader was added

    def send(self, frames: list[bytes]) -> bool:
        """Send now or drop (a peer not connected, or at its high-water mark); True if sent."""
        try:
            # Frame by frame with plain int flags, as send_multipart would, without its checks and
            # enum arithmetic (one run message per run of a burst).
            for frame in frames[:-1]:
                self._sock.send(frame, _SNDMORE_NOBLOCK)
            self._sock.send(frames[-1], _NOBLOCK)
            return True
        except zmq.ZMQError:
            return False
        finally:
            self._schedule()

    def close(self) -> None:
        """Stop reading; idempotent. A drain already queued finds the inbox closed."""
        self._closed = True
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        else:
            self._loop.remove_reader(self._fd)

    def drain_pending(self) -> None:
        """Hand over what is waiting now, whatever the gap (before acting on a worker's exit)."""
        self._drain()

    def _too_soon(self) -> bool:
        return self._loop.time() - self._last_drain < self._gap

    def _on_readable(self) -> None:
        if self._too_soon():
            self._defer()
        else:
            self._drain_and_continue()

    def _defer(self) -> None:
        """Stop watching the FD and drain when the gap since the last drain has passed."""
        if self._deferred is None:
            self._loop.remove_reader(self._fd)
            self._deferred = self._loop.call_at(self._last_drain + self._gap, self._on_timer)

    def _on_timer(self) -> None:
        """A busy channel is drained on this timer, every gap, until a drain finds nothing."""
        self._deferred = None
        if self._closed:
            return
        if self._drain():
            self._deferred = self._loop.call_at(self._last_drain + self._gap, self._on_timer)
        else:
            self._loop.add_reader(self._fd, self._on_readable)
            self._schedule()  # a message may have come between the drain and add_reader

    def _schedule(self) -> None:
        if self._scheduled or self._deferred is not None or not cast(int, self._sock.getsockopt(zmq.EVENTS)) & _POLLIN:
            return
        if self._too_soon():
            self._defer()
        else:
            self._scheduled = True
            self._loop.call_soon(self._drain_and_continue)

    def _drain_and_continue(self) -> None:
        if self._drain() >= self.BATCH:
            self._schedule()  # more than a batch waiting: let other callbacks run first

    def _drain(self) -> int:
        """Read and hand over every waiting message (up to BATCH); how many there were."""
        with self._around():
            return self._drain_now()

    def _drain_now(self) -> int:
        self._scheduled = False
        self._last_drain = self._loop.time()
        sock = self._sock
        count = 0
        if self._closed:
            return count
        recv, more, on_frames = sock.recv, sock.get, self._on_frames
        try:
            # Receive until Again: one exception per drain. Asking for EVENTS before each
            # message cost two system calls a message (libzmq polls its mailbox and checks
            # getpid() on every EVENTS query); a receive that finds nothing processes the
            # mailbox the same way, which re-arms the edge-triggered FD. The frames are read
            # as recv_multipart would, with plain int options: half its cost per message.
            while count < self.BATCH:
                frames = [recv(_NOBLOCK)]
                while more(_RCVMORE):
                    frames.append(recv(_NOBLOCK))
                on_frames(frames)
                count += 1
        except zmq.Again:
            pass
        except zmq.ZMQError:
            pass  # closed under us at shutdown
        return count
