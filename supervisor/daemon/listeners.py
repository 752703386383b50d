"""Listening sockets owned by the supervisor and inherited by workers (systemd socket activation).

A service's `sockets` are bound the first time one of its workers starts and
stay open in the supervisor across every restart of it: connections that
arrive while no worker is up wait in the kernel's accept queue for the next
one, instead of being refused. Every instance of a service (`processes = N`)
gets the same sockets. They are closed when the service is removed, when its
`sockets` change, and when the supervisor exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping, Sequence

from supervise.supervisor.config.listen import parse_address

__all__ = ["ListenSockets"]


def _bind(name: str, address: str) -> socket.socket:
    family, where = parse_address(address)
    try:
        if family == "unix":
            path = str(where)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)  # left by an earlier run; anything else at the path is not ours to remove
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
        else:
            host, _, port = str(where).removeprefix("tcp://").rpartition(":")
            host = host.strip("[]")
            info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
        sock.listen(socket.SOMAXCONN)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on socket {name} ({address}): {e.strerror}") from e
    return sock


class ListenSockets:
    """The bound sockets of every service, by service name (instances share their service's)."""

    def __init__(self) -> None:
        self._bound: dict[str, tuple[Mapping[str, str], list[tuple[str, socket.socket]]]] = {}

    def for_service(self, service: str, wanted: Mapping[str, str]) -> Sequence[tuple[str, int]]:
        """(name, fd) of `service`'s sockets, bound now if they are not yet; raises OSError if one cannot be."""
        if not wanted:
            self.close(service)
            return ()
        held = self._bound.get(service)
        if held is None or dict(held[0]) != dict(wanted):
            self.close(service)
            socks: list[tuple[str, socket.socket]] = []
            try:
                for name, address in wanted.items():
                    socks.append((name, _bind(name, address)))
            except OSError:
                for _, sock in socks:
                    sock.close()
                raise
            held = self._bound[service] = (dict(wanted), socks)
        return [(name, sock.fileno()) for name, sock in held[1]]

    def close(self, service: str) -> None:
        """Close `service`'s sockets (a unix socket's file is removed)."""
        held = self._bound.pop(service, None)
        for _, sock in held[1] if held else []:
            if sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(sock.getsockname())
            sock.close()

    def close_all(self) -> None:
        for service in list(self._bound):
            self.close(service)
