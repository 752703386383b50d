"""A service written for systemd's Type=notify, with the standard library only.

It sends STATUS= while it warms up, READY=1 (with MAINPID=) after $READY_AFTER_S,
WATCHDOG=1 every half $WATCHDOG_USEC while $STUCK_FILE does not exist (a line
in $BEATS_FILE for each), and
STOPPING=1 when it gets SIGTERM, then exits 0. Run as `python notify_service.py`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path


def notify(message: str) -> None:
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace, as sd_notify(3) allows
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def stop(signum: int, frame: object) -> None:
    notify("STOPPING=1\nSTATUS=shutting down")
    sys.exit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, stop)
    notify("STATUS=warming up")
    time.sleep(float(os.environ.get("READY_AFTER_S", "0")))
    notify(f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}")
    period_s = int(os.environ.get("WATCHDOG_USEC", "400000")) / 2e6
    stuck = Path(os.environ.get("STUCK_FILE", "/nonexistent"))
    beats = os.environ.get("BEATS_FILE")
    while True:
        if not stuck.exists():
            notify("WATCHDOG=1")
            if beats:
                with open(beats, "a") as out:
                    out.write("beat\n")
        time.sleep(period_s)


if __name__ == "__main__":
    main()
