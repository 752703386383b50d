"""A small HTTP server written for systemd socket activation: it serves on the socket at fd 3.

It checks the LISTEN_* contract (LISTEN_PID is its own pid, LISTEN_FDS counts
the fds, LISTEN_FDNAMES names them), answers every GET with its pid and the fd
names, and on SIGTERM finishes the request in hand before exiting 0, leaving
connections not yet accepted in the shared socket's queue for its successor.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SD_LISTEN_FDS_START = 3


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{os.getpid()} {os.environ['LISTEN_FDNAMES']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)  # first: a stop during start-up must not lose a request
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        print(f"LISTEN_PID={os.environ.get('LISTEN_PID')} is not my pid {os.getpid()}", flush=True)
        return 2
    count = int(os.environ["LISTEN_FDS"])
    sockets = [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(count)]
    print(f"serving on {count} fds: {os.environ['LISTEN_FDNAMES']}", flush=True)
    server = HTTPServer(sockets[0].getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sockets[0]
    # Several workers share the socket: a select() that wakes them all must not leave
    # the losers blocked in accept() (where a SIGTERM would not get them out).
    server.socket.setblocking(False)
    server.timeout = 0.05
    while not stopping:
        server.handle_request()
    return 0


if __name__ == "__main__":
    sys.exit(main())
