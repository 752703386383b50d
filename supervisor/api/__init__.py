"""The HTTP API, `/api/v1`, on the daemon's aiohttp server beside /health and /metrics.

`ApiServer.mount` is called by the HTTP server while it builds its application;
the reference is docs/api.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from supervise.supervisor.api.browser import Browser
from supervise.supervisor.api.cluster import ClusterResource
from supervise.supervisor.api.openapi import document
from supervise.supervisor.api.resources import Resources
from supervise.supervisor.api.server import PREFIX, ApiError, Pipeline, problem_response
from supervise.supervisor.api.store import ApiStore
from supervise.supervisor.core.errors import ConfigError, ConfigProblem
from supervise.supervisor.core.samples import SampleHistory
from supervise.supervisor.store.base import StoreError

if TYPE_CHECKING:
    from supervise.supervisor.api.ports import ApiHost, EventRing
    from supervise.supervisor.api.task_notify import TaskOutbox
    from supervise.supervisor.config.cluster import ClusterConfig
    from supervise.supervisor.config.model import SupervisorConfig

log = logging.getLogger("supervise")

__all__ = ["ApiServer", "check_exposure"]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: SupervisorConfig, store: ApiStore) -> None:
    """A non-loopback address needs TLS and at least one token, or `insecure_http = true` (logged CRITICAL).

    Raises:
        ConfigError: naming `supervisor.http`, saying what is missing and how to fix it.
    """
    assert config.http is not None
    host = config.http.rpartition(":")[0].strip("[]")
    if is_loopback(host):
        return
    missing = []
    if config.http_tls_cert is None:
        missing.append("without TLS (set http_tls_cert and http_tls_key)")
    if store.usable_token_count() == 0:
        missing.append("with no API token (create one with 'supervise token create NAME --role admin')")
    if not missing:
        return
    if not config.insecure_http:
        problem = (
            f"{config.http} is reachable from other hosts, {' and '.join(missing)}: fix that, bind 127.0.0.1, "
            "or set insecure_http = true to accept the risk"
        )
        raise ConfigError("[supervisor]", [ConfigProblem("supervisor.http", problem)])
    log.critical(
        "HTTP API on %s %s (insecure_http = true): tokens cross the network in clear without TLS, "
        "and with no token every API call is refused until one is created",
        config.http,
        " and ".join(missing),
    )


class ApiServer:
    """Owned by the composition root; mounted on the HTTP server's application."""

    def __init__(
        self,
        host: ApiHost,
        events: EventRing,
        config: SupervisorConfig,
        *,
        samples: SampleHistory | None = None,
        cluster: ClusterConfig | None = None,
    ) -> None:
        self._cluster = cluster  # cluster mode: the tokens are the cluster's (cluster_tokens.py)
        self._host = host
        self._events = events
        self._config = config
        self._samples = samples if samples is not None else SampleHistory(1)
        self.store: ApiStore | None = None
        self.resources: Resources | None = None
        self.pipeline: Pipeline | None = None
        self.browser: Browser | None = None
        self.cluster: ClusterResource | None = None
        self._own: tuple[str | None, int | None] | None = None

    def mount(self, app: web.Application) -> None:
        """Add `/api/v1` to `app`; raises ConfigError when the address is exposed without a token."""
        if self._cluster is not None:
            from supervise.supervisor.api.open_store import open_api_store  # psycopg: cluster mode only

            try:
                store = open_api_store(self._config.state_dir, self._cluster, node=self._cluster.node)
            except StoreError as e:
                raise ConfigError(
                    "[cluster]", [ConfigProblem("cluster.store", f"cannot open the cluster's API tokens: {e}")]
                ) from None
        else:
            store = ApiStore(self._config.state_dir)
        try:
            check_exposure(self._config, store)
        except ConfigError:
            store.close()
            raise
        store.write_behind(asyncio.get_running_loop().call_soon)  # one commit per loop turn, not per row
        self.store = store
        self.resources = resources = Resources(
            self._host,
            store,
            self._events,
            max_pending_tasks=self._config.tenant_max_pending_tasks,
            max_runs_per_minute=self._config.tenant_max_runs_per_minute,
        )
        self.pipeline = pipeline = Pipeline(store, context=self._context)
        self.browser = browser = Browser(resources, pipeline, self._samples, self._config.sample_interval_ms / 1000)
        self.cluster = cluster = ClusterResource(self._host)
        routes = resources.routes() + browser.routes() + cluster.routes()
        spec = document(routes)
        for route in routes:
            app.router.add_route(route.method, PREFIX + route.path, pipeline.wrap(route))

        async def openapi(request: web.Request) -> web.Response:
            return web.json_response(spec)

        shapes = [(re.compile(re.sub(r"{\w+}", "[^/]+", PREFIX + r.path) + "$"), r.method) for r in routes]

        async def unknown(request: web.Request) -> web.Response:
            allowed = sorted({method for shape, method in shapes if shape.match(request.path)})
            if allowed:
                error = ApiError(405, "Method Not Allowed", f"{request.path[:200]} answers {', '.join(allowed)}")
                error.headers["Allow"] = ", ".join(allowed)
            else:
                error = ApiError(404, "Not Found", f"no endpoint {request.method} {request.path[:200]}")
            return problem_response(error, None)

        app.router.add_get(PREFIX + "/openapi.json", openapi)
        app.router.add_route("*", PREFIX + "/{tail:.*}", unknown)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)

    def attach(self, outbox: TaskOutbox) -> None:
        """The notifier has started: tasks' notify rules are delivered through its outbox."""
        if self.resources is not None:
            self.resources.tasks.notifier.attach(outbox)

    def _context(self) -> dict[str, Any]:
        if self._own is None:
            bound = self._host.ping().get("http")
            if isinstance(bound, str):
                host, _, port = bound.rpartition(":")
                self._own = (host.strip("[]"), int(port))
        own_host, own_port = self._own or (None, None)
        return {"own_host": own_host, "own_port": own_port}

    async def _on_shutdown(self, app: web.Application) -> None:
        if self.resources is not None:
            self.resources.close()  # event streams end, so the server can close
        if self.browser is not None:
            self.browser.close()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.store is not None:
            self.store.close()
            self.store = None
