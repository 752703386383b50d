"""sd_notify for `type = "notify"` services: one datagram socket per service in the state directory.

A program written for systemd finds the socket in `NOTIFY_SOCKET` and sends
newline-separated `KEY=VALUE` datagrams (`READY=1`, `STATUS=...`, `WATCHDOG=1`,
`MAINPID=...`, `RELOADING=1`, `STOPPING=1`). Each service (each instance) has a
socket of its own, so a message's sender is known by where it arrives, without
peer credentials, and `systemd-notify` (which sends from a short-lived child
process) works too. The fields go to the service's state machine as a
`Notified` event; what they mean is decided there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from supervise.supervisor.config.loader import notify_socket_path
from supervise.supervisor.core import state as core

log = logging.getLogger("supervise")

MAX_DATAGRAM_BYTES = 65_536


def parse_notify(datagram: bytes) -> dict[str, str]:
    """The `KEY=VALUE` lines of a datagram; lines without `=` are ignored, as systemd does."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifySockets:
    """The NOTIFY_SOCKETs of a supervisor's notify services, read on its event loop."""

    def __init__(self, state_dir: Path, feed: Callable[[str, core.Event], None]) -> None:
        self._state_dir = state_dir
        self._feed = feed
        self._sockets: dict[str, socket.socket] = {}

    def env_for(self, instance: str, watchdog_ms: int | None) -> Mapping[str, str]:
        """The environment a notify service is spawned with; binds its socket on first use."""
        path = self._open(instance)
        if path is None:
            return {}
        env = {"NOTIFY_SOCKET": str(path)}
        if watchdog_ms is not None:
            env["WATCHDOG_USEC"] = str(watchdog_ms * 1000)  # sd_watchdog_enabled() reads it
        return env

    def _open(self, instance: str) -> Path | None:
        path = notify_socket_path(self._state_dir, instance)
        if instance in self._sockets:
            return path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a supervisor killed with -9
            sock.bind(str(path))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            log.error("%s: cannot bind its NOTIFY_SOCKET %s: %s; it cannot send READY=1", instance, path, e)
            return None
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read, instance, sock)
        self._sockets[instance] = sock
        return path

    def _read(self, instance: str, sock: socket.socket) -> None:
        while True:
            try:
                datagram = sock.recv(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("%s: reading its NOTIFY_SOCKET failed: %s", instance, e)
                return
            fields = parse_notify(datagram)
            if fields:
                self._feed(instance, core.Notified(fields))

    def discard(self, instance: str) -> None:
        """Close and remove an instance's socket (the service was removed)."""
        sock = self._sockets.pop(instance, None)
        if sock is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(notify_socket_path(self._state_dir, instance))

    def close(self) -> None:
        for instance in list(self._sockets):
            self.discard(instance)
