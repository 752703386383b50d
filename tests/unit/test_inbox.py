"""The worker-channel Inbox: every message delivered in order, a busy channel read in batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import zmq

from supervise.supervisor.daemon.sockets import Inbox


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def _run(scenario: Callable[[zmq.Socket[bytes], zmq.Socket[bytes]], Awaitable[None]]) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    server.bind("inproc://inbox")
    client.setsockopt(zmq.IDENTITY, b"w/1")
    client.connect("inproc://inbox")
    try:
        asyncio.run(scenario(server, client))
    finally:
        server.close(linger=0)
        client.close(linger=0)
        ctx.term()


class _Counting:
    def __init__(self) -> None:
        self.frames: list[list[bytes]] = []
        self.calls = 0


def _inbox(server: zmq.Socket[bytes], gap_s: float, seen: _Counting) -> Inbox:
    inbox = Inbox(asyncio.get_running_loop(), server, seen.frames.append, min_gap_s=gap_s)
    drain = inbox._drain

    def counted() -> int:
        seen.calls += 1
        return drain()

    inbox._drain = counted  # type: ignore[method-assign]
    return inbox


def test_a_busy_channel_is_drained_in_batches_and_loses_nothing() -> None:
    async def scenario(server: zmq.Socket[bytes], client: zmq.Socket[bytes]) -> None:
        seen = _Counting()
        inbox = _inbox(server, 0.05, seen)
        for i in range(200):  # a message a millisecond for ~0.2 s: far busier than the 50 ms gap
            client.send(b"%d" % i)
            await asyncio.sleep(0.001)
        await _until(lambda: len(seen.frames) == 200, "all 200 messages")
        assert [body for _, body in seen.frames] == [b"%d" % i for i in range(200)]
        assert seen.calls < 50, f"{seen.calls} drains for 200 messages: the gap did not batch them"
        inbox.close()

    _run(scenario)


def test_without_a_gap_every_message_is_read_as_it_comes() -> None:
    async def scenario(server: zmq.Socket[bytes], client: zmq.Socket[bytes]) -> None:
        seen = _Counting()
        inbox = _inbox(server, 0.0, seen)
        for i in range(20):
            client.send(b"%d" % i)
            await _until(lambda i=i: len(seen.frames) == i + 1, f"message {i}")
        assert seen.calls >= 20
        inbox.close()

    _run(scenario)


def test_a_channel_that_went_quiet_is_watched_again() -> None:
    async def scenario(server: zmq.Socket[bytes], client: zmq.Socket[bytes]) -> None:
        seen = _Counting()
        inbox = _inbox(server, 0.05, seen)
        for _ in range(10):
            client.send(b"burst")
        await _until(lambda: len(seen.frames) == 10, "the burst")
        await _until(lambda: inbox._deferred is None, "the inbox back on its FD")
        client.send(b"alone")
        await _until(lambda: len(seen.frames) == 11, "a message after the quiet")
        assert seen.frames[-1][1] == b"alone"
        inbox.close()

    _run(scenario)


@pytest.mark.parametrize("gap_s", [0.0, 0.05])
def test_closing_while_a_drain_is_pending_is_clean(gap_s: float) -> None:
    async def scenario(server: zmq.Socket[bytes], client: zmq.Socket[bytes]) -> None:
        seen = _Counting()
        inbox = _inbox(server, gap_s, seen)
        for _ in range(5):
            client.send(b"x")
            await asyncio.sleep(0.002)
        inbox.close()
        inbox.close()
        await asyncio.sleep(0.1)  # a timer left behind would drain a closed inbox here
        received = len(seen.frames)
        client.send(b"after close")
        await asyncio.sleep(0.1)
        assert len(seen.frames) == received

    _run(scenario)
