"""The supervisor's three endpoints: control (ROUTER), workers (ROUTER) and events (PUB).

Binding takes CURVE with a ZAP allow-list onto tcp:// endpoints (or refuses them,
or logs CRITICAL with `insecure = true`); ipc socket files are made 0600. The
worker ROUTER is a plain socket (read by `Inbox` without a future per message),
the others are asyncio sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from supervise.protocol.endpoints import ipc_path
from supervise.supervisor.config.loader import Config
from supervise.supervisor.core.errors import ConfigError, ConfigProblem
from supervise.supervisor.daemon.curve import (
    CurveServer,
    KeyFileError,
    describe,
    load_curve_server,
    tcp_endpoints,
)
from supervise.supervisor.daemon.descriptors import DescriptorWatch
from supervise.supervisor.daemon.tcp_connections import ConnectionCounter

if TYPE_CHECKING:
    from zmq.auth.asyncio import AsyncioAuthenticator

log = logging.getLogger("supervise")

HANDSHAKE_IVL_MS = 3000


class Endpoints:
    """The bound sockets of one supervisor; `bind` once, `close` once (idempotent)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._zctx: zmq.asyncio.Context | None = None
        self.control: zmq.asyncio.Socket | None = None
        self.workers: zmq.Socket[bytes] | None = None
        self.events: zmq.asyncio.Socket | None = None
        self.curve: CurveServer | None = None
        self._auth: AsyncioAuthenticator | None = None  # ZAP for tcp:// endpoints with CURVE
        self._watch: asyncio.Task[None] | None = None  # DescriptorWatch, with tcp:// endpoints
        self._connections: ConnectionCounter | None = None  # of the tcp:// endpoints, for ZAP's cap

    def bind(self) -> None:
        """Bind control, worker and events endpoints (ipc files 0600); CURVE first on tcp://."""
        sup = self.config.supervisor
        self._zctx = zmq.asyncio.Context()
        if tcp_endpoints(sup):
            self._connections = ConnectionCounter(zmq.Context.shadow(self._zctx.underlying))
            self._secure_tcp()
        self.control = self._bound(zmq.ROUTER, sup.control_endpoint)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A plain socket: read by `Inbox` without a future per heartbeat.
        self.workers = self._bound(zmq.ROUTER, sup.workers_endpoint, zmq.Context.shadow(self._zctx.underlying))
        # Set before bind: libzmq copies socket options into each subscriber's pipe at bind time.
        # XPUB, not PUB: the same to subscribers, and it tells the supervisor what they subscribed
        # to, so events nobody listens to are not encoded and sent (`EventLog._wanted`).
        self.events = self._bound(zmq.XPUB, sup.events_endpoint, options={zmq.SNDHWM: 10_000})
        if self._connections is not None:
            for sock, _ in self._tcp_sockets():
                self._connections.watch(sock)
            watch = DescriptorWatch(self._pause_tcp, self._resume_tcp)
            self._watch = asyncio.get_running_loop().create_task(watch.run(), name="supervise-descriptors")

    def _tcp_sockets(self) -> list[tuple[Any, str]]:
        sup = self.config.supervisor
        pairs = [(self.control, sup.control_endpoint), (self.events, sup.events_endpoint)]
        return [(sock, endpoint) for sock, endpoint in pairs if sock is not None and endpoint.startswith("tcp://")]

    def _pause_tcp(self) -> None:
        """Stop listening on the tcp:// endpoints (descriptors are short). libzmq also ends the
        connections accepted there: their descriptors are freed, their clients reconnect later."""
        for sock, endpoint in self._tcp_sockets():
            try:
                sock.unbind(endpoint)
            except zmq.ZMQError as e:
                log.warning("could not stop listening on %s: %s", endpoint, e)
        if self._connections is not None:
            self._connections.reset()

    def _resume_tcp(self) -> None:
        for sock, endpoint in self._tcp_sockets():
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as e:  # retried at the next pause/resume cycle
                log.warning("could not listen on %s again: %s", endpoint, e)

    def _bound(
        self, kind: int, endpoint: str, context: zmq.Context[Any] | None = None, options: Mapping[int, int] = {}
    ) -> Any:
        assert self._zctx is not None
        sock = (context or self._zctx).socket(kind)
        for option, value in options.items():
            sock.setsockopt(option, value)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        if endpoint.startswith("tcp://"):
            # ZMTP heartbeats find dead TCP peers (never proof that a client is alive).
            sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
            sock.setsockopt(zmq.HEARTBEAT_TTL, 6000)
            # A connection that has not finished its handshake (CURVE's, or ZMTP's own) in
            # 3 s is dropped: idle connections must not pile up and use up descriptors.
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
            if self.curve is not None:
                self.curve.configure(sock)
        sock.bind(endpoint)
        path = ipc_path(endpoint)
        if path is not None:
            os.chmod(path, 0o600)
        return sock

    def _secure_tcp(self) -> None:
        """CURVE with a ZAP allow-list on tcp:// endpoints, started before any bind; or insecure, loudly."""
        sup = self.config.supervisor
        try:
            self.curve = load_curve_server(sup)
        except KeyFileError as e:  # validated at load; the files changed since
            raise ConfigError(self.config.source, [ConfigProblem("supervisor.curve_server_key", str(e))]) from None
        if self.curve is None:
            if not sup.insecure:  # parse_config refuses this; a SupervisorConfig built by hand may not
                problem = "tcp:// requires CURVE: set curve_server_key and curve_clients, or insecure = true"
                raise ConfigError(self.config.source, [ConfigProblem("supervisor.control", problem)])
            log.critical(
                "INSECURE: %s accept(s) any client without authentication or encryption (insecure = true); "
                "anyone who can reach the port can run any command as uid %d. Set curve_server_key and "
                "curve_clients (docs/security.md)",
                ", ".join(tcp_endpoints(sup)),
                os.geteuid(),
            )
            return
        if not zmq.has("curve"):
            problem = (
                f"this libzmq {zmq.zmq_version()} was built without CURVE; install pyzmq's wheels (they include it)"
            )
            raise ConfigError(self.config.source, [ConfigProblem("supervisor.curve_server_key", problem)])
        assert self._zctx is not None
        self._auth = self.curve.start_authenticator(
            self._zctx, self._connections.count if self._connections is not None else None, sup.max_tcp_connections
        )
        log.info("%s", describe(self.curve, sup))

    def close(self) -> None:
        """Close whatever is open (also after a failed bind) and remove the ipc files."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._connections is not None:
            self._connections.close()
            self._connections = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        for sock in (self.control, self.workers, self.events):
            if sock is not None:
                sock.close(linger=0)
        if self._zctx is not None:
            self._zctx.term()
            self._zctx = None
        sup = self.config.supervisor
        for endpoint in (sup.control_endpoint, sup.workers_endpoint, sup.events_endpoint):
            path = ipc_path(endpoint)
            if path is not None:
                path.unlink(missing_ok=True)  # ours: we hold (held) the state dir's lock
