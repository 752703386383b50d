"""One control client flooding heavy requests cannot stall the supervisor for the others (real daemon, real sockets)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from supervise.protocol.client import Client
from supervise.protocol.codec import encode_request, unpack
from supervise.protocol.limits import REPLY_LIMITS
from tests.conftest import Daemon

FOREVER = "tests.children.targets:forever"
FLOOD_S = 5.0
OUTSTANDING = 32


def heavy_status_frame() -> bytes:
    """A `status` request inside the frame and depth limits, but holding a million values."""
    inner = [1] * 1000
    return encode_request(1, "status", {"name": [[inner] * 30] * 34})


class Flood(threading.Thread):
    """Keeps OUTSTANDING heavy requests queued at the supervisor for FLOOD_S seconds."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.sent = 0
        self.replies: list[object] = []

    def run(self) -> None:
        frame = heavy_status_frame()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(self.endpoint)
        try:
            end = time.monotonic() + FLOOD_S
            while time.monotonic() < end:
                while sock.poll(0):
                    self.replies.append(unpack(sock.recv(), REPLY_LIMITS, what="reply", walk=False))
                if self.sent - len(self.replies) < OUTSTANDING:
                    sock.send(frame)
                    self.sent += 1
                else:
                    sock.poll(20)
        finally:
            sock.close(linger=0)
            ctx.term()


def test_a_flood_of_heavy_requests_leaves_ping_fast_and_workers_alive(daemon_factory: Callable[..., Daemon], short_dir: object) -> None:
    d = daemon_factory({"py": {"target": FOREVER, "heartbeat_interval": "200ms", "heartbeat_timeout": "2s"}})
    pid = d.wait_running_pid("py")
    endpoint = f"ipc://{d.config.parent}/state/control.sock"
    flood = Flood(endpoint)
    flood.start()
    latencies: list[float] = []
    with Client(endpoint, timeout_s=5.0) as other:
        while flood.is_alive():
            started = time.monotonic()
            other.call("ping")
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    flood.join()

    assert flood.sent > OUTSTANDING, "the flood never got going"
    assert flood.replies and all(isinstance(r, dict) and r.get("error", {}).get("code") == "too_large" for r in flood.replies)
    assert len(latencies) > 10
    print(f"flood: {flood.sent} frames, {len(latencies)} pings, max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 0.2, f"ping took up to {max(latencies) * 1000:.0f} ms during the flood ({len(latencies)} pings)"
    svc = d.service("py")
    assert (svc["state"], svc["pid"]) == ("RUNNING", pid)
    assert "no word from the supervisor" not in d.log()
