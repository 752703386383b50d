"""The endpoints a browser (the dashboard) needs beside the resources: sessions, samples, config, log follow.

- `POST/GET/DELETE /session`: sign in with a token (cookies, see session.py), ask
  what the credential may do, sign out;
- `GET /samples` and `GET /samples/stream`: the last minutes of CPU and memory
  per service (`core.samples.SampleHistory`), and each new round as it is taken;
- `GET /services/{name}/config`: the service's table as the daemon holds it;
- `GET /services/{name}/logs/stream`: its output as it is written.

Like every route they answer only what the credential's tenant may see.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field

from supervise.protocol.version import VERSION
from supervise.supervisor.api.models import Open, Strict
from supervise.supervisor.api.resources import SSE_KEEPALIVE_S, Resources
from supervise.supervisor.api.server import Call, Pipeline, Reply, Route, wait_event
from supervise.supervisor.api.session import CSRF_COOKIE, clear_session, set_session
from supervise.supervisor.api.store import Role
from supervise.supervisor.core.samples import Point, SampleHistory
from supervise.supervisor.daemon.logtail import Follower

LOG_FOLLOW_INTERVAL_S = 0.5
LOG_CHUNK_LINES = 200  # lines per SSE message at most
REDACTED = "(hidden)"
NAME = r"[a-z][a-z0-9_-]{0,62}"


class SignIn(Strict):
    """The token a browser signs in with."""

    token: str = Field(min_length=1, max_length=512, description="an API token, svt_<id>_<secret>")


class Session(Open):
    """Who the credential is, and what the page may offer it."""

    name: str = Field(description="the token's name")
    role: str = Field(description="viewer, operator or admin")
    tenant: str | None = None
    via: str = Field(description='"cookie" (a signed-in browser) or "bearer"')
    csrf_token: str | None = Field(default=None, description="echo as X-CSRF-Token on POST, PUT, PATCH, DELETE")
    version: str = Field(description="the daemon's version")
    can: list[str] = Field(description='what the role allows: "read", "act", "manage"')


class SignedOut(Open):
    signed_out: bool


class SamplesQuery(Strict):
    points: int = Field(default=60, ge=1, le=600, description="the newest points per service")
    service: str | None = Field(default=None, pattern=f"^{NAME}$", description="only this service")


class Series(Open):
    t: list[float] = Field(description="seconds since the epoch of each point")
    cpu: list[float] = Field(description="CPU percent of the worker tree (100 = one core)")
    rss: list[int] = Field(description="resident memory of the worker tree, bytes")


class Samples(Open):
    interval_s: float = Field(description="seconds between two samples")
    services: dict[str, Series]


class ServiceSettings(Open):
    name: str
    table: dict[str, Any] = Field(description="the [services.NAME] table the daemon holds (env values hidden)")
    settings: dict[str, Any] = Field(description="every setting after defaults, in the daemon's units (_ms, _bytes)")


class LogStreamQuery(Strict):
    lines: int = Field(default=100, ge=0, le=10_000, description="lines of the tail sent first")


def _can(role: Role) -> list[str]:
    return ["read"] + (["act"] if role >= Role.OPERATOR else []) + (["manage"] if role >= Role.ADMIN else [])


class Browser:
    """The handlers of this module; `routes()` joins the resources' table."""

    def __init__(self, resources: Resources, pipeline: Pipeline, samples: SampleHistory, interval_s: float) -> None:
        self.resources = resources
        self.pipeline = pipeline
        self.samples = samples
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        samples.listeners.append(self._on_samples)

    def _on_samples(self, wall_s: float, points: Mapping[str, Point]) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def close(self) -> None:
        """End every stream of this module (the server is shutting down; `resources.closing` is set)."""
        self._on_samples(0.0, {})

    # -- sessions ------------------------------------------------------------------------------

    async def sign_in(self, call: Call) -> web.StreamResponse:
        body: SignIn = call.body
        token = self.pipeline.check_sign_in(call.request, body.token)
        response = web.Response(content_type="application/json")
        csrf = set_session(response, call.request, body.token.strip())
        session = Session(
            name=token.name,
            role=str(token.role),
            tenant=token.tenant,
            via="cookie",
            csrf_token=csrf,
            version=VERSION,
            can=_can(token.role),
        )
        response.text = session.model_dump_json()
        self.pipeline.audit_sign_in(token, call.request)
        return response

    async def get_session(self, call: Call) -> Reply:
        token = call.token
        assert token is not None
        csrf = call.request.cookies.get(CSRF_COOKIE) if call.via_cookie else None
        return Reply(
            Session(
                name=token.name,
                role=str(token.role),
                tenant=token.tenant,
                via="cookie" if call.via_cookie else "bearer",
                csrf_token=csrf,
                version=VERSION,
                can=_can(token.role),
            )
        )

    async def sign_out(self, call: Call) -> web.StreamResponse:
        response = web.Response(text=SignedOut(signed_out=True).model_dump_json(), content_type="application/json")
        clear_session(response)
        return response

    # -- samples -------------------------------------------------------------------------------

    def _visible_names(self, call: Call, only: str | None) -> list[str]:
        if only is not None:
            return [self.resources.require_visible(call, only)]
        return [n for n in self.resources.host.service_names() if self.resources.visible(call, n)]

    async def get_samples(self, call: Call) -> Reply:
        query: SamplesQuery = call.query
        names = self._visible_names(call, query.service)
        series = self.samples.series(names, query.points)
        return Reply(Samples.model_validate({"interval_s": self.interval_s, "services": series}))

    async def stream_samples(self, call: Call) -> web.StreamResponse:
        """Each round of samples as `event: sample`, `data: {"t": ..., "services": {name: [cpu, rss]}}`."""
        query: SamplesQuery = call.query
        self._visible_names(call, query.service)  # 404 before the stream starts
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(call.request)
        closing = self.resources.closing
        rounds = self.samples.rounds
        while not closing.is_set():
            wake = self._wake
            if self.samples.rounds != rounds:
                rounds = self.samples.rounds
                names = self._visible_names(call, query.service)
                latest = {n: p[-1] for n in names if (p := self.samples.points(n, 1))}
                t = max((p.wall_s for p in latest.values()), default=None)
                fresh = {n: [p.cpu_percent, p.rss_bytes] for n, p in latest.items() if p.wall_s == t}
                data = json.dumps({"t": t, "services": fresh}, separators=(",", ":"))
                await response.write(b"event: sample\ndata: " + data.encode() + b"\n\n")
            if not await wait_event(wake, SSE_KEEPALIVE_S):
                await response.write(b": keep-alive\n\n")
        return response

    # -- a service's config and log --------------------------------------------------------------

    async def service_config(self, call: Call) -> Reply:
        name = self.resources.require_visible(call, call.param("name"))
        config = self.resources.host.require(name).config
        table = _redacted(dict(config.table))
        settings = {
            f.name: _plain(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if f.name not in ("table", "env", "name")
        }
        settings["env"] = {k: REDACTED for k in config.env}
        return Reply(ServiceSettings(name=name, table=table, settings=settings))

    async def stream_logs(self, call: Call) -> web.StreamResponse:
        """`event: lines` with `data: ["line", ...]`: the tail first, then what the service writes."""
        name = self.resources.require_visible(call, call.param("name"))
        query: LogStreamQuery = call.query
        found = await self.resources.command("logs", name=name, lines=query.lines)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(call.request)
        await response.write(_lines_event(found["lines"]))
        follower = Follower(Path(found["path"]), offset=found["offset"], inode=found["inode"])
        closing = self.resources.closing
        partial = b""
        idle_s = 0.0
        try:
            while not closing.is_set():
                # The daemon writes this file itself, but through the workers' pipes: reading what
                # was appended twice a second costs a read() per open page and nothing else.
                data = partial + follower.read()
                *complete, partial = data.split(b"\n")
                for start in range(0, len(complete), LOG_CHUNK_LINES):
                    chunk = complete[start : start + LOG_CHUNK_LINES]
                    await response.write(_lines_event([c.decode(errors="replace") for c in chunk]))
                idle_s = 0.0 if complete else idle_s + LOG_FOLLOW_INTERVAL_S
                if idle_s >= SSE_KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    idle_s = 0.0
                await wait_event(closing, LOG_FOLLOW_INTERVAL_S)
        finally:
            follower.close()
        return response

    # -- the table ----------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        V = Role.VIEWER
        name = {"name": NAME}
        return [
            Route(
                "POST",
                "/session",
                self.sign_in,
                V,
                "Sign a browser in: the token goes into an HttpOnly cookie",
                "session",
                body=SignIn,
                response=Session,
                errors=(401, 422),
                public=True,
            ),
            Route(
                "GET",
                "/session",
                self.get_session,
                V,
                "Who the credential is and what it may do",
                "session",
                response=Session,
            ),
            Route(
                "DELETE",
                "/session",
                self.sign_out,
                V,
                "Sign a browser out: the session cookies are cleared",
                "session",
                response=SignedOut,
                public=True,
            ),
            Route(
                "GET",
                "/samples",
                self.get_samples,
                V,
                "CPU and memory of the last minutes, per service",
                "services",
                query=SamplesQuery,
                response=Samples,
                errors=(404,),
            ),
            Route(
                "GET",
                "/samples/stream",
                self.stream_samples,
                V,
                "Server-Sent Events: each new round of CPU and memory samples",
                "services",
                query=SamplesQuery,
                errors=(404,),
                stream=True,
            ),
            Route(
                "GET",
                "/services/{name}/config",
                self.service_config,
                V,
                "A service's settings as the daemon holds them",
                "services",
                response=ServiceSettings,
                errors=(404,),
                path_patterns=name,
            ),
            Route(
                "GET",
                "/services/{name}/logs/stream",
                self.stream_logs,
                V,
                "Server-Sent Events: a service's output as it is written",
                "services",
                query=LogStreamQuery,
                errors=(404,),
                stream=True,
                path_patterns=name,
            ),
        ]


def _lines_event(lines: list[str]) -> bytes:
    return b"event: lines\ndata: " + json.dumps(lines, separators=(",", ":")).encode() + b"\n\n"


def _redacted(table: dict[str, Any]) -> dict[str, Any]:
    """The table with the values of `env` and `headers` hidden: they are where secrets live."""
    out = {k: _plain(v) for k, v in table.items()}
    for key in ("env", "headers"):
        if isinstance(out.get(key), dict):
            out[key] = {k: REDACTED for k in out[key]}
    return out


def _plain(value: object) -> Any:
    """A config value as JSON can carry it."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
