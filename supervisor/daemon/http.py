"""The HTTP endpoint for probes and scrapers: /health, /health/live, /health/ready, /metrics.

Served by aiohttp on the supervisor's own event loop (off by default; on with
`[supervisor] http = "127.0.0.1:9180"`, port 0 for any free port). Handlers only
read in-memory state, so a probe never waits on a worker.

- `GET /health` and `GET /health/ready`: 200 when every critical service is
  healthy, else 503, with a JSON body (see `Observability.health`).
- `GET /health/live`: 200 while the supervisor's loop answers.
- `GET /metrics`: Prometheus text (or OpenMetrics, if the scraper asks for it).

Connections are capped in number and in time (http_guard.py). With
`http_tls_cert` and `http_tls_key` it speaks HTTPS only (TLS 1.2 or later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from supervise.supervisor.core.errors import ConfigError, ConfigProblem
from supervise.supervisor.daemon.http_guard import ConnectionGuard

log = logging.getLogger("supervise")

Health = Callable[[], tuple[bool, Mapping[str, Any]]]
Scrape = Callable[[str | None], tuple[bytes, str]]
Mount = Callable[[web.Application], None]
"""Adds routes to the application before it serves (the HTTP API); may raise ConfigError."""


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS context from PEM files.

    Raises:
        ConfigError: naming supervisor.http_tls_cert when the pair cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        problem = (
            f"cannot load the certificate {cert} with the key {key}: {getattr(e, 'reason', None) or e}; "
            "both must be PEM files, the key the certificate's own (and not encrypted)"
        )
        raise ConfigError("[supervisor]", [ConfigProblem("supervisor.http_tls_cert", problem)]) from None
    return context


def split_host_port(address: str) -> tuple[str, int]:
    """ "127.0.0.1:9180" -> ("127.0.0.1", 9180); "[::1]:0" -> ("::1", 0)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HttpServer:
    """An aiohttp server bound to one address; `start` returns where it listens."""

    def __init__(
        self,
        address: str,
        *,
        health: Health,
        scrape: Scrape,
        mounts: Sequence[Mount] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.address = address
        self.tls = tls  # (certificate, key): HTTPS
        self._mounts = mounts
        self.bound: str | None = None
        self._health = health
        self._scrape = scrape
        self._runner: web.AppRunner | None = None
        self.guard = ConnectionGuard()

    async def start(self) -> str:
        """Listen; returns "host:port" with the real port (port 0 picks a free one).

        Raises:
            ConfigError: the address cannot be listened on (in use, not local, ...).
        """
        context = tls_context(*self.tls) if self.tls is not None else None
        app = web.Application()
        app.router.add_get("/health", self._on_health)
        app.router.add_get("/health/ready", self._on_health)
        app.router.add_get("/health/live", self._on_live)
        app.router.add_get("/metrics", self._on_metrics)
        for mount in self._mounts:
            mount(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = split_host_port(self.address)
        try:
            await _GuardedSite(runner, self.guard, host, port, ssl_context=context).start()
        except OSError as e:
            await runner.cleanup()
            problem = (
                f"cannot listen on {self.address}: {e.strerror or e}; choose another address, "
                f"or port 0 for any free one"
            )
            raise ConfigError("[supervisor]", [ConfigProblem("supervisor.http", problem)]) from None
        self._runner = runner
        sockname = runner.addresses[0]
        bound_host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self.bound = f"{bound_host}:{sockname[1]}"
        log.info("HTTP /health and /metrics at %s://%s", "https" if context else "http", self.bound)
        return self.bound

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_health(self, request: web.Request) -> web.Response:
        healthy, body = self._health()
        return web.json_response(body, status=200 if healthy else 503, dumps=_dumps)

    async def _on_live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _on_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._scrape(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


class _GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every connection passed through a `ConnectionGuard`."""

    def __init__(
        self,
        runner: web.AppRunner,
        guard: ConnectionGuard,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog, ssl=self._ssl_context
        )


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=str)
