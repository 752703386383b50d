"""How many connections the tcp:// sockets hold, from their ZeroMQ monitor events.

libzmq has no cap on the connections a bound socket accepts. Each costs the
supervisor a descriptor, and a client with an accepted CURVE key could hold as
many as it likes. The monitor of each tcp:// socket reports every accepted and
every ended connection; their difference is the count the CURVE handshake's
ZAP handler (curve.py) compares with `max_tcp_connections`: past it, a new
client's handshake is refused and libzmq closes that connection, while the
connected ones stay.
"""

from __future__ import annotations

from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class ConnectionCounter:
    """Accepted minus ended connections over the sockets it watches; read with `count()` (never blocks)."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self._context = context
        self._watched: list[tuple[Any, zmq.Socket[bytes]]] = []
        self._open = 0

    def watch(self, sock: Any) -> None:
        """Count the connections of `sock` (a bound socket of `context`) from now on."""
        address = f"inproc://supervise-monitor-{id(sock)}"
        sock.monitor(address, _EVENTS)
        monitor = self._context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        # libzmq's I/O thread blocks on a full monitor pipe, stalling every socket: no limit here
        # (events are small and read twice a second).
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.connect(address)
        self._watched.append((sock, monitor))

    def count(self) -> int:
        """The connections open now, after reading every event the monitors have queued."""
        for _, monitor in self._watched:
            while True:
                try:
                    frames = monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = parse_monitor_message(frames)["event"]
                if event == zmq.EVENT_ACCEPTED:
                    self._open += 1
                elif event == zmq.EVENT_DISCONNECTED:
                    self._open = max(0, self._open - 1)
        return self._open

    def reset(self) -> None:
        """The sockets stopped listening: libzmq ends the connections they had accepted without a
        "disconnected" event, so the count starts again from none."""
        self.count()
        self._open = 0

    def close(self) -> None:
        """Stop the monitors (before their sockets are closed)."""
        for sock, monitor in self._watched:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass  # the socket is already closed
            monitor.close(linger=0)
        self._watched.clear()
