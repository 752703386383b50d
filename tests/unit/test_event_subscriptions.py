"""Events go out on an XPUB socket: sent to subscribers as on PUB, and not even encoded for nobody."""

from __future__ import annotations

import time

import zmq
import zmq.asyncio

from supervise.protocol.codec import unpack
from supervise.supervisor.daemon.events import EventLog


def _receive(sub: zmq.Socket[bytes], timeout_s: float = 5.0) -> list[bytes]:
    if not sub.poll(int(timeout_s * 1000)):
        raise AssertionError(f"no event within {timeout_s} s")
    return sub.recv_multipart()


def _emit_until_received(events: EventLog, sub: zmq.Socket[bytes], service: str, timeout_s: float = 5.0) -> dict:
    """Emit until the subscriber gets one (a subscription reaches the socket asynchronously, as on PUB)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events.emit(service, "state", {"to": "RUNNING"})
        if sub.poll(20):
            topic, body = sub.recv_multipart()
            assert topic == f"{service}.state".encode()
            got = unpack(body)
            assert isinstance(got, dict)
            return got
    raise AssertionError(f"the subscriber got no {service} event within {timeout_s} s")


def test_an_xpub_socket_sends_what_is_subscribed_and_skips_the_rest() -> None:
    ctx = zmq.asyncio.Context()
    xpub = ctx.socket(zmq.XPUB)
    sync_ctx = zmq.Context.shadow(ctx.underlying)
    sub = sync_ctx.socket(zmq.SUB)
    try:
        xpub.bind("inproc://events")
        events = EventLog()
        events.attach(xpub)
        events.emit("web", "state", {"to": "RUNNING"})  # nobody subscribed: counted, not sent
        assert events.published == 1 and events.dropped == 0
        sub.connect("inproc://events")
        sub.subscribe(b"web.")
        got = _emit_until_received(events, sub, "web")
        assert got["service"] == "web" and got["seq"] == events.seq
        assert events._subscribed == {b"web."}  # what is wanted, as the socket told it
        events.emit("db", "state", {"to": "RUNNING"})  # not subscribed: not sent
        events.emit("web", "exited", {"code": 0})
        topic, _ = _receive(sub)
        assert topic == b"web.exited"
        sub.unsubscribe(b"web.")
        sub.subscribe(b"")  # everything
        _emit_until_received(events, sub, "db")
        assert events.published == events.seq and events.dropped == 0
    finally:
        sub.close(linger=0)
        xpub.close(linger=0)
        ctx.term()


def test_on_a_plain_pub_socket_every_event_is_sent() -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    sub = zmq.Context.shadow(ctx.underlying).socket(zmq.SUB)
    try:
        pub.bind("inproc://events")
        events = EventLog()
        events.attach(pub)
        sub.connect("inproc://events")
        sub.subscribe(b"")
        got = _emit_until_received(events, sub, "web")
        assert got["kind"] == "state"
    finally:
        sub.close(linger=0)
        pub.close(linger=0)
        ctx.term()
