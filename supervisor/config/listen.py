"""The `sockets` key: listening sockets the supervisor binds once and hands to the service's workers.

`sockets = { http = "tcp://127.0.0.1:8080", admin = "unix:/run/app/admin.sock" }`.
Each name becomes one of `LISTEN_FDNAMES` (systemd socket activation); the order
of the table is the order of the fds, from 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from supervise.supervisor.core.units import show_value, type_name

__all__ = ["convert_sockets", "parse_address"]

_TCP = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")  # sd_listen_fds_with_names: no ":" (the separator), printable


def parse_address(address: str) -> tuple[str, str]:
    """("tcp", the address) or ("unix", the path); raises ValueError with an example."""
    if (match := _TCP.fullmatch(address)) is not None and 0 <= int(match[2]) <= 65535:
        return "tcp", address
    if address.startswith("unix:") and len(address) > len("unix:"):
        path = address.removeprefix("unix:")
        if path.startswith("/"):
            return "unix", path
    raise ValueError(f'expected "tcp://HOST:PORT" or "unix:/absolute/path", got {show_value(address)}')


def convert_sockets(value: object, ctx: object) -> Mapping[str, str]:
    """Validate the table of name -> address."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f'expected a table like {{ http = "tcp://127.0.0.1:8080" }}, got {type_name(value)}')
    found: dict[str, str] = {}
    for name, address in value.items():
        if not _NAME.fullmatch(str(name)):
            raise ValueError(f"socket names use letters, digits, _ . - (no colon), got {show_value(name)}")
        if not isinstance(address, str):
            raise ValueError(f"{name}: expected an address string, got {show_value(address)}")
        try:
            parse_address(address)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        found[str(name)] = address
    return MappingProxyType(found)
