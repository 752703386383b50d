"""The request pipeline of `/api/v1`: refuse, authenticate, authorize, validate, run, audit.

Every route is a `Route` (method, path, role, models, handler); `ApiServer.mount`
adds them to the daemon's aiohttp application beside /health and /metrics, and
`openapi.document` describes the same table. Each request goes through, in order:

1. a token in the query string: refused (400), before anything else;
2. a client that failed authentication too often: 429 with `Retry-After`;
3. `Authorization: Bearer <token>`, or else the session cookie of a signed-in browser
   (session.py): missing or wrong, 401 with `WWW-Authenticate`; a cookie-authenticated
   request that may change state without the matching `X-CSRF-Token`: 403;
4. the route's role: below it, 403 (a `public` route skips 3 and 4: signing in and out);
5. the body: over `MAX_BODY_BYTES` 413, not JSON 400, not valid for the model 422;
6. `Idempotency-Key` (POST): a replay answers what the first request got;
7. the handler; errors become RFC 9457 problem+json;
8. state-changing calls are written to the audit log.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from supervise.protocol.errors import ErrorCode, ProtocolError, SuperviseError
from supervise.supervisor.api.models import FieldProblem, Problem
from supervise.supervisor.api.session import CSRF_HEADER, SAFE_METHODS, csrf_ok, session_token
from supervise.supervisor.api.store import ApiStore, Remembered, Role, Token
from supervise.supervisor.core.errors import ConfigError, ServiceNotFound
from supervise.supervisor.store.base import StoreError

log = logging.getLogger("supervise.api")

PREFIX = "/api/v1"
MAX_BODY_BYTES = 1024 * 1024
MAX_AUTH_HEADER = 512
QUERY_TOKEN_NAMES = frozenset({"access_token", "token", "api_key", "apikey", "key", "bearer", "auth", "authorization"})
FAILURE_WINDOW_S = 60.0
FAILURE_LIMIT = 50  # failed authentications per client address and window
_TRACKED_CLIENTS = 10_000
PROBLEM_TYPE = "application/problem+json"


class ApiError(Exception):
    """An answer other than success, as a problem+json body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


def not_found(what: str) -> ApiError:
    return ApiError(404, "Not Found", f"no {what}")


@dataclass(slots=True)
class Call:
    """One authenticated request, as a handler sees it."""

    request: web.Request
    token: Token | None  # None only on a public route
    body: Any = None  # the validated body model
    query: Any = None  # the validated query model
    via_cookie: bool = False  # authenticated by a browser's session cookie, not a header

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def tenant(self) -> str | None:
        return self.token.tenant if self.token is not None else None


@dataclass(slots=True)
class Reply:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Call], Awaitable["Reply | web.StreamResponse"]]


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API: what the pipeline checks, and what openapi.py documents."""

    method: str
    path: str  # below PREFIX, with {params}
    handler: Handler
    role: Role
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    stream: bool = False  # Server-Sent Events
    public: bool = False  # no authentication (signing in and out); the handler checks what it needs
    path_patterns: Mapping[str, str] = field(default_factory=dict)


class FailureLimiter:
    """Failed authentications per client address in a sliding window."""

    def __init__(self, limit: int = FAILURE_LIMIT, window_s: float = FAILURE_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, collections.deque[float]] = {}

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds until `client` may try again; None when it may now."""
        times = self._failures.get(client)
        if times is None:
            return None
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) < self.limit:
            return None
        return max(1, int(self.window_s - (now - times[0])) + 1)

    def failed(self, client: str, now: float) -> None:
        if client not in self._failures and len(self._failures) >= _TRACKED_CLIENTS:
            self._forget_idle(now)
        times = self._failures.setdefault(client, collections.deque(maxlen=self.limit))
        times.append(now)

    def _forget_idle(self, now: float) -> None:
        for client in [c for c, t in self._failures.items() if not t or now - t[-1] > self.window_s]:
            del self._failures[client]
        if len(self._failures) >= _TRACKED_CLIENTS:
            self._failures.clear()  # a flood of addresses: start over rather than grow


def problem_response(error: ApiError, instance: str | None = None) -> web.Response:
    errors = [FieldProblem(**e) for e in error.errors] if error.errors is not None else None
    problem = Problem(title=error.title, status=error.status, detail=error.detail, instance=instance, errors=errors)
    return web.Response(
        status=error.status,
        body=problem.model_dump_json(exclude_none=True),
        content_type=PROBLEM_TYPE,
        headers=error.headers,
    )


def validation_problem(e: ValidationError, where: str = "") -> ApiError:
    """A pydantic error as 400 (not JSON at all) or 422 (JSON, but not what the model wants)."""
    errors = []
    for item in e.errors(include_url=False):
        if item["type"] == "json_invalid":
            return ApiError(
                400, "Malformed JSON", f"the body is not valid JSON: {item.get('ctx', {}).get('error', item['msg'])}"
            )
        pointer = where + "".join(f"/{part}" for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append({"pointer": pointer or "/", "detail": message})
    detail = "; ".join(f"{x['pointer']}: {x['detail']}" for x in errors)
    return ApiError(422, "Invalid request", detail, errors=errors)


def error_from(e: SuperviseError) -> ApiError:
    """What the daemon's own errors mean over HTTP."""
    if isinstance(e, ServiceNotFound):
        return not_found(f'service "{e.name}"')
    if isinstance(e, ConfigError):
        errors = [
            {"pointer": "/spec/" + p.key.split(".", 2)[-1].replace(".", "/") if p.key else "/spec", "detail": p.problem}
            for p in e.problems
        ]
        return ApiError(
            422, "Invalid service", "; ".join(f"{x['pointer']}: {x['detail']}" for x in errors), errors=errors
        )
    if isinstance(e, ProtocolError):
        status = {
            ErrorCode.NOT_FOUND: 404,
            ErrorCode.CONFLICT: 409,
            ErrorCode.BAD_ARGS: 422,
            ErrorCode.FORBIDDEN: 403,
            ErrorCode.RATE_LIMITED: 429,
        }.get(e.code, 400)
        titles = {404: "Not Found", 409: "Conflict", 422: "Invalid request", 403: "Forbidden", 429: "Too Many Requests"}
        return ApiError(status, titles.get(status, "Bad Request"), e.message)
    return ApiError(409, "Conflict", str(e))


class Pipeline:
    """Turns a `Route` into an aiohttp handler with every check of the module docstring."""

    def __init__(
        self, store: ApiStore, *, limiter: FailureLimiter | None = None, context: Callable[[], dict[str, Any]]
    ) -> None:
        self.store = store
        self.limiter = limiter or FailureLimiter()
        self._context = context  # what validators may need (the daemon's own address)
        self._in_flight: set[tuple[str, str]] = set()
        self.auth_failures = 0

    def wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            token: Token | None = None
            via_cookie = False
            try:
                if not route.public:
                    token, via_cookie = self._authenticate(request)
                    if via_cookie and request.method not in SAFE_METHODS and not csrf_ok(request):
                        raise ApiError(
                            403,
                            "Forbidden",
                            f"a signed-in browser's {request.method} needs the {CSRF_HEADER} header"
                            " (the value of the supervise_csrf cookie); reload the page and try again",
                        )
                    if token.role < route.role:
                        raise ApiError(
                            403, "Forbidden", f"this needs the {route.role} role; the token has {token.role}"
                        )
                for name, pattern in route.path_patterns.items():
                    if not re.fullmatch(pattern, request.match_info.get(name, "")):
                        raise not_found(f"{name} {request.match_info.get(name, '')[:80]!r}")
                call = Call(request, token, via_cookie=via_cookie)
                if route.query is not None:
                    call.query = self._query(route.query, request)
                raw = b""
                if route.body is not None:
                    raw = await read_body(request)
                    call.body = self._body(route.body, raw)
                response = await self._idempotent(route, call, raw)
            except ApiError as e:
                response = problem_response(e, request.path)
            if token is not None and route.method != "GET":
                self._audit(token, request, response.status, route)
            return response

        return handle

    def _authenticate(self, request: web.Request) -> tuple[Token, bool]:
        """The token of the request and whether it came in the session cookie; ApiError if none is good."""
        named = QUERY_TOKEN_NAMES.intersection(k.lower() for k in request.query)
        if named:
            raise ApiError(
                400,
                "Token in query string",
                f"credentials in the URL ({sorted(named)[0]}) are refused: URLs end up in logs; "
                "send them as the header Authorization: Bearer <token>",
            )
        client, now = self._refuse_if_limited(request)
        header = request.headers.get("Authorization", "")
        scheme, _, text = header.partition(" ")
        challenge = 'Bearer realm="supervise"'
        cookie = session_token(request) if not header else None
        if not header and cookie is None:
            raise ApiError(
                401, "Unauthorized", "send Authorization: Bearer <token>", headers={"WWW-Authenticate": challenge}
            )
        token = None
        if cookie is not None:
            if len(cookie) <= MAX_AUTH_HEADER:
                token = self._verify(cookie)
        elif scheme.lower() == "bearer" and len(header) <= MAX_AUTH_HEADER:
            token = self._verify(text.strip())
        if token is None:
            self.auth_failures += 1
            self.limiter.failed(client, now)
            raise ApiError(
                401,
                "Unauthorized",
                "the token is unknown, revoked or expired",
                headers={"WWW-Authenticate": challenge + ', error="invalid_token"'},
            )
        return token, cookie is not None

    def _verify(self, text: str) -> Token | None:
        """The store's `verify`; in cluster mode a cluster store that cannot be read answers 503."""
        try:
            return self.store.verify(text)
        except StoreError as e:
            log.warning("cannot check a token: %s", e)
            raise ApiError(
                503, "Service Unavailable", "cannot read the cluster store to check the token; retry"
            ) from None

    def _query(self, model: type[BaseModel], request: web.Request) -> BaseModel:
        values: dict[str, Any] = {}
        for key in request.query:
            got = request.query.getall(key)
            values[key] = got[0] if len(got) == 1 else got
        try:
            return model.model_validate_strings(values, context=self._context())
        except ValidationError as e:
            raise validation_problem(e, "query:") from None

    def _body(self, model: type[BaseModel], raw: bytes) -> BaseModel:
        try:
            return model.model_validate_json(raw or b"{}", context=self._context())
        except ValidationError as e:
            raise validation_problem(e) from None

    async def _idempotent(self, route: Route, call: Call, raw: bytes) -> web.StreamResponse:
        key = call.request.headers.get("Idempotency-Key")
        if route.method != "POST" or key is None or call.token is None:
            return await self._run(route, call)
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise ApiError(400, "Bad Idempotency-Key", "Idempotency-Key must be 1 to 255 printable characters")
        fingerprint = hashlib.sha256(f"{route.method} {call.request.path}\n".encode() + raw).hexdigest()
        first = self.store.remembered(call.token.id, key)
        if first is not None:
            if first.fingerprint != fingerprint:
                raise ApiError(409, "Idempotency-Key reused", "this Idempotency-Key was used with another request body")
            headers = {**first.headers, "Idempotent-Replayed": "true"}
            return web.Response(status=first.status, body=first.body, content_type="application/json", headers=headers)
        slot = (call.token.id, key)
        if slot in self._in_flight:
            raise ApiError(
                409, "Idempotency-Key in use", "a request with this Idempotency-Key is still being processed"
            )
        self._in_flight.add(slot)
        try:
            response = await self._run(route, call)
            if isinstance(response, web.Response) and response.status < 400 and response.body is not None:
                body = response.body if isinstance(response.body, bytes) else str(response.body).encode()
                kept = {k: v for k, v in response.headers.items() if k in ("Location",)}
                self.store.remember(call.token.id, key, Remembered(fingerprint, response.status, body.decode(), kept))
            return response
        finally:
            self._in_flight.discard(slot)

    async def _run(self, route: Route, call: Call) -> web.StreamResponse:
        try:
            reply = await route.handler(call)
        except SuperviseError as e:
            raise error_from(e) from None
        except ApiError:
            raise
        except Exception:
            ref = hashlib.sha256(f"{time.time()}{id(call)}".encode()).hexdigest()[:8]
            log.exception("internal error (ref %s) in %s %s", ref, route.method, route.path)
            raise ApiError(500, "Internal Server Error", f"internal error (ref {ref}); see the supervise log") from None
        if isinstance(reply, web.StreamResponse):
            return reply
        body = reply.body
        text = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body, default=str)
        return web.Response(status=reply.status, text=text, content_type="application/json", headers=reply.headers)

    def _refuse_if_limited(self, request: web.Request) -> tuple[str, float]:
        """(the client's address, now); ApiError 429 while that address is over the failure limit."""
        client = request.remote or "?"
        now = time.monotonic()
        wait = self.limiter.retry_after(client, now)
        if wait is not None:
            raise ApiError(
                429,
                "Too Many Requests",
                "too many failed authentications from this address",
                headers={"Retry-After": str(wait)},
            )
        return client, now

    def check_sign_in(self, request: web.Request, text: str) -> Token:
        """The token a browser signs in with, under the same failure limit as every other; ApiError if wrong."""
        client, now = self._refuse_if_limited(request)
        token = self._verify(text.strip()) if len(text) <= MAX_AUTH_HEADER else None
        if token is None:
            self.auth_failures += 1
            self.limiter.failed(client, now)
            raise ApiError(401, "Unauthorized", "the token is unknown, revoked or expired")
        return token

    def audit_sign_in(self, token: Token, request: web.Request) -> None:
        """A browser signed in with `token`: written to the audit log like a state change."""
        try:
            self.store.audit(token, request.remote, request.method, request.path, 200, "Sign a browser in")
        except Exception:
            log.exception("cannot write the audit entry of a sign-in")

    def _audit(self, token: Token, request: web.Request, status: int, route: Route) -> None:
        try:
            self.store.audit(token, request.remote, request.method, request.path, status, route.summary)
        except Exception:  # the answer is given; a full disk must not turn it into a 500
            log.exception("cannot write the audit entry of %s %s", request.method, request.path)


async def read_body(request: web.Request, cap: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most `cap` bytes (413 beyond), read without trusting Content-Length."""
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(
            413, "Content Too Large", f"the body is {request.content_length} bytes; at most {cap} are accepted"
        )
    kind = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
    if kind not in ("application/json", "") and not kind.endswith("+json"):
        raise ApiError(415, "Unsupported Media Type", f"send Content-Type: application/json, not {kind}")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            raise ApiError(413, "Content Too Large", f"the body is over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
