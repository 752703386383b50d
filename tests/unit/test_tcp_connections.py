"""The tcp:// connection count follows real connections: accepted, dropped at the handshake interval, closed."""

from __future__ import annotations

import socket

import zmq

from supervise.supervisor.daemon.tcp_connections import ConnectionCounter
from tests.conftest import wait_for


def test_the_count_follows_connections_as_they_come_and_go() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.HANDSHAKE_IVL, 300)  # raw connections that never speak are dropped after this
    port = router.bind_to_random_port("tcp://127.0.0.1")
    counter = ConnectionCounter(context)
    counter.watch(router)
    dealer = context.socket(zmq.DEALER)
    raw: list[socket.socket] = []
    try:
        assert counter.count() == 0
        raw = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        dealer.connect(f"tcp://127.0.0.1:{port}")
        wait_for(lambda: counter.count() == 6, timeout_s=5, what="six connections counted")
        wait_for(lambda: counter.count() == 1, timeout_s=5, what="the silent ones dropped at the handshake interval")
        dealer.close(linger=0)
        wait_for(lambda: counter.count() == 0, timeout_s=5, what="the dealer's connection gone")
    finally:
        for s in raw:
            s.close()
        counter.close()
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()
