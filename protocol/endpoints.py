"""Where the supervisor's three sockets live, and the rules an endpoint must follow.

By default all three are `ipc://` sockets in the state directory. A UNIX
socket path is limited to 107 bytes on Linux, which a deep state directory
exceeds easily, so `check_ipc_endpoint` says so before libzmq fails obscurely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_IPC_PATH_BYTES = 107
"""Longest UNIX socket path: `sun_path` is 108 bytes on Linux, including the final NUL."""

_IPC = "ipc://"


@dataclass(frozen=True)
class Endpoints:
    """The supervisor's ZeroMQ endpoints.

    Attributes:
        control: ROUTER for control requests from clients (CLI, Python, others).
        workers: ROUTER that worker processes connect their DEALERs to.
        events: PUB for the event stream.
    """

    control: str
    workers: str
    events: str


def default_endpoints(state_dir: Path) -> Endpoints:
    """The default `ipc://` endpoints inside `state_dir` (made absolute).

    Returns:
        `ipc://<state_dir>/control.sock`, `.../workers.sock` and `.../events.sock`.
    """
    base = Path(state_dir).absolute()
    return Endpoints(
        control=f"{_IPC}{base / 'control.sock'}",
        workers=f"{_IPC}{base / 'workers.sock'}",
        events=f"{_IPC}{base / 'events.sock'}",
    )


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an `ipc://` endpoint, or None.

    None for any other transport, and for Linux abstract sockets
    (`ipc://@name`), which have no file.
    """
    if not endpoint.startswith(_IPC):
        return None
    rest = endpoint[len(_IPC) :]
    if not rest or rest.startswith("@"):
        return None
    return Path(rest)


def check_ipc_endpoint(endpoint: str) -> str | None:
    """What is wrong with an `ipc://` endpoint, or None if nothing (or not ipc).

    Returns:
        A message such as `ipc path is 131 bytes; UNIX sockets allow 107 (use a
        shorter state_dir)`, meant to follow the config key it came from.
    """
    if not endpoint.startswith(_IPC):
        return None
    if endpoint == _IPC:
        return "ipc endpoint has no path (write ipc:///absolute/path/control.sock)"
    rest = endpoint[len(_IPC) :]
    size = len(os.fsencode(rest))
    if size > MAX_IPC_PATH_BYTES:
        return f"ipc path is {size} bytes; UNIX sockets allow {MAX_IPC_PATH_BYTES} (use a shorter state_dir)"
    return None
