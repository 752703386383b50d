"""The supervisor's side of CURVE: its key pair, the allow-lists of client keys, ZAP, keygen.

A `tcp://` control or events endpoint is a CURVE server. Which clients may
connect is decided by a ZAP handler (pyzmq's `AsyncioAuthenticator`), started
on the supervisor's context **before** any socket is bound: libzmq asks ZAP
about every CURVE handshake only if a handler is there, and without one it lets
any key in. The handler accepts exactly the public keys found in
`curve_clients` (full access) and `curve_readonly_clients` (read-only commands),
read once at start; never `CURVE_ALLOW_ANY`. A refused handshake never yields a
message, so an unknown key never reaches the control dispatcher.

The ZAP User-Id of an accepted connection is the client's Z85 public key
(pyzmq's default); `ControlServer` reads it from each request's frame metadata
to refuse state-changing commands to read-only keys.

The handler also refuses any key while the tcp:// endpoints hold more than
`max_tcp_connections` connections (counted by tcp_connections.py), so that
clients with an accepted key cannot use up the supervisor's descriptors.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from supervise.protocol.curve import (
    KeyFileError,
    read_key_directory,
    read_key_pair,
)

if TYPE_CHECKING:
    import zmq.asyncio
    from zmq.auth.asyncio import AsyncioAuthenticator

    from supervise.supervisor.config.loader import SupervisorConfig

__all__ = ["CurveServer", "KeyFileError", "create_key_pair", "load_curve_server", "read_key_directory", "tcp_endpoints"]

log = logging.getLogger("supervise.security")

_LOGGED_REFUSALS_MAX = 1000  # refused keys logged at WARNING once each, up to this many


def tcp_endpoints(sup: SupervisorConfig) -> list[str]:
    """The supervisor's endpoints that are `tcp://` (the workers socket is always ipc://)."""
    return [e for e in (sup.control_endpoint, sup.events_endpoint) if e.startswith("tcp://")]


@dataclass(frozen=True, slots=True)
class CurveServer:
    """The supervisor's key pair and the client keys it accepts (Z85 key -> key name)."""

    public: bytes
    secret: bytes
    clients: Mapping[bytes, str]  # full access
    readonly: Mapping[bytes, str]  # read-only commands (changes_state=False)

    def __repr__(self) -> str:  # never print a secret key
        return (
            f"CurveServer(public={self.public.decode()!r}, clients={len(self.clients)}, readonly={len(self.readonly)})"
        )

    def readonly_user_ids(self) -> dict[str, str]:
        """ZAP User-Id (the Z85 public key as text) -> key name, for `ControlServer`."""
        return {key.decode("ascii"): name for key, name in self.readonly.items()}

    def start_authenticator(
        self,
        context: zmq.asyncio.Context,
        connections: Callable[[], int] | None = None,
        max_connections: int = 1024,
    ) -> AsyncioAuthenticator:
        """Start ZAP on `context` with this allow-list; call before binding any CURVE socket.

        `connections` counts the tcp:// connections open, the one being authenticated
        included: past `max_connections` a handshake is refused, whatever the key.
        """
        from zmq.auth.asyncio import AsyncioAuthenticator

        auth = AsyncioAuthenticator(context=context, log=logging.getLogger("supervise.security.zap"))
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(self, connections, max_connections))
        return auth

    def configure(self, sock: zmq.asyncio.Socket) -> None:
        """Make `sock` (before `bind`) a CURVE server with the supervisor's key pair."""
        import zmq

        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


class _AllowList:
    """The credentials provider of `configure_curve_callback`: is this key in an allow-list?"""

    def __init__(self, server: CurveServer, connections: Callable[[], int] | None, max_connections: int) -> None:
        self._server = server
        self._connections = connections
        self._max_connections = max_connections
        self._logged: set[bytes] = set()
        self._crowded_logged_at = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        if self._connections is not None and (count := self._connections()) > self._max_connections:
            if time.monotonic() - self._crowded_logged_at >= 1.0:  # at most once a second
                self._crowded_logged_at = time.monotonic()
                log.warning(
                    "refused a CURVE client: %d tcp:// connections open (at most %d)", count, self._max_connections
                )
            return False
        name = self._server.clients.get(key) or self._server.readonly.get(key)
        if name is not None:
            log.debug("CURVE client %s (key %s) accepted", name, key.decode("ascii", "replace"))
            return True
        # A refused client reconnects again and again: one WARNING per key, not one per attempt.
        level = logging.DEBUG if key in self._logged or len(self._logged) >= _LOGGED_REFUSALS_MAX else logging.WARNING
        self._logged.add(key)
        log.log(level, "refused a CURVE client with unknown public key %s", key.decode("ascii", "replace"))
        return False


def load_curve_server(sup: SupervisorConfig) -> CurveServer | None:
    """The CURVE setup of a validated `[supervisor]` table, read from its key files; None without keys.

    Raises:
        KeyFileError: a key file changed since the config was loaded and is no longer usable.
    """
    if sup.curve_server_key is None:
        return None
    public, secret = read_key_pair(sup.curve_server_key)
    clients = read_key_directory(sup.curve_clients) if sup.curve_clients is not None else {}
    readonly = read_key_directory(sup.curve_readonly_clients) if sup.curve_readonly_clients is not None else {}
    # A key in both lists gets the lesser right (config validation refuses this; files may change).
    clients = {key: name for key, name in clients.items() if key not in readonly}
    return CurveServer(public, secret, MappingProxyType(clients), MappingProxyType(readonly))


def create_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write `NAME.key` (public, 0644) and `NAME.key_secret` (0600) in `directory` (created 0700).

    Raises:
        FileExistsError: either file exists already (keys are never overwritten).
    """
    from zmq.auth import create_certificates

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; keys are never overwritten (remove it, or pick another name)")
    old = os.umask(0o077)  # the secret file is never readable by others, not even for an instant
    try:
        written_public, written_secret = create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(written_public, 0o644)
    os.chmod(written_secret, 0o600)
    return Path(written_public), Path(written_secret)


def describe(server: CurveServer | None, sup: SupervisorConfig) -> str | None:
    """The start-up log line about CURVE on the tcp:// endpoints; None without CURVE or tcp://."""
    tcp = tcp_endpoints(sup)
    if server is None or not tcp:
        return None
    return (
        f"CURVE on {', '.join(tcp)}: {len(server.clients)} full-access and "
        f"{len(server.readonly)} read-only client keys; server public key {server.public.decode()}"
    )
