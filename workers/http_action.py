"""The built-in `http` action: call a URL, in a worker process, with a timeout.

The call is asynchronous (aiohttp): a worker's runs share one event loop and one
connection pool (at most `PER_HOST_LIMIT` connections to one host), so hundreds
of calls in flight need no threads. Every call carries `Idempotency-Key: <key>`,
the run's idempotency key, the same for every attempt and re-run of one
occurrence, so a receiver can deduplicate; in cluster mode also `Supervise-Epoch:
<epoch>`, the fencing token of the run's lease (higher after each takeover).

The supervisor passes the service's configured request and its policy in
`SUPERVISE_HTTP_POLICY` (JSON): what a run's arguments may override
(`allow_run_overrides`), and the address policy (`block_private_addresses`,
`allow_addresses`). Before anything is sent:

- a run argument that changes a key not listed in `allow_run_overrides` fails
  the run; `${VAR}` is expanded (from the worker's environment) in configured
  values only, never in values a run supplied;
- the final URL, and every redirect, must be http:// or https:// without credentials;
- a URL that is not the configured one, and every redirect to another host, may
  reach only addresses the policy allows, checked after DNS resolution; the
  connection goes to exactly the addresses checked;
- credentials (Authorization, Cookie) are not carried to another host.

`request_timeout` is one deadline for the whole request: connecting, every
redirect, the headers and the body. At most `MAX_BODY_BYTES` of the response
are read; an excerpt is the run's result.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
import socket
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from supervise.protocol.url_policy import POLICY_VARIABLE, AddressPolicy, UrlRefused, check_url, origin, refusal_error
from supervise.workers.context import JobContext
from supervise.workers.executor import is_shared_loop
from supervise.workers.http_policy import HttpPolicy, OverrideRefused

MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 2000
MAX_REDIRECTS = 10
PER_HOST_LIMIT = 100  # connections to one host at once; more calls wait for one in the pool
IDEMPOTENCY_HEADER = "Idempotency-Key"
EPOCH_HEADER = "Supervise-Epoch"  # cluster mode: the run's fencing token (docs/cluster.md)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})

Origin = tuple[str, int]


class HttpActionError(RuntimeError):
    """The call failed, was refused by the service's policy, or answered outside `expect_status`."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request the action sends: what a URL policy gets to see."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


def expand(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise HttpActionError(f"${{{name}}} is not set in the service's environment (add it to env)")
        return os.environ[name]

    return _VAR.sub(value, text)


def build_request(
    ctx: JobContext,
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    *,
    policy: HttpPolicy | None = None,
) -> HttpRequest:
    """The request of one run: configured `${VAR}`s expanded, the idempotency key added (unless set)."""
    policy = policy or HttpPolicy()
    trusted = policy.configured is None  # no policy: everything is the operator's

    def final(key: str, value: str) -> str:
        return expand(value) if trusted or policy.from_config(key, value) else value

    configured_headers = trusted or policy.from_config("headers", headers)
    given = {k: expand(v) if configured_headers else v for k, v in (headers or {}).items()}
    key = getattr(ctx, "idempotency_key", None)
    if key and not any(k.lower() == IDEMPOTENCY_HEADER.lower() for k in given):
        given[IDEMPOTENCY_HEADER] = key
    epoch = getattr(ctx, "epoch", None)
    if epoch is not None and not any(k.lower() == EPOCH_HEADER.lower() for k in given):
        given[EPOCH_HEADER] = str(epoch)
    return HttpRequest(
        method=method.upper(),
        url=final("url", url),
        headers=given,
        body=final("body", body).encode() if body is not None else None,
    )


def check_request(request: HttpRequest, addresses: AddressPolicy, trusted: Origin | None) -> Origin:
    """Refuse a hop the action must not send (raises HttpActionError); returns its origin.

    The URL's shape is checked here; the addresses of a host name after resolution,
    by the resolver of the connection pool; an IP-literal host here, since no
    resolver sees it.
    """
    try:
        hop = _checked_origin(request.url)
    except UrlRefused as e:
        raise HttpActionError(f"refusing {request.url}: {e}") from None
    if hop != trusted:
        host, port = hop
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return hop  # a name: checked after resolution
        reason = addresses.refusal(address, port)
        if reason is not None:
            raise HttpActionError(f"{request.method} {request.url} refused: {refusal_error(host, port, [reason])}")
    return hop


async def call(
    ctx: JobContext,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    expect_status: list[int] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, object]:
    """Make the request; returns `{"status", "body"}` or raises HttpActionError."""
    low, high = expect_status or [200, 299]
    policy = _policy(os.environ.get(POLICY_VARIABLE, ""))
    given: dict[str, object] = {"url": url, "method": method, "headers": headers or {}, "body": body}
    given.update(expect_status=expect_status, timeout_s=timeout_s)
    try:
        policy.check_overrides({k: v for k, v in given.items() if policy.configured is None or k in policy.configured})
    except OverrideRefused as e:
        raise HttpActionError(str(e)) from None
    low, high = expect_status or [200, 299]
    request = build_request(ctx, url, method, headers, body, policy=policy)
    trusted = _origin_of(request.url) if policy.from_config("url", url) else None
    status, data = await send(request, timeout_s, addresses=policy.addresses, trusted=trusted)
    excerpt = data.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    if not low <= status <= high:
        raise HttpActionError(f"{request.method} {url} answered {status}, expected {low}-{high}: {excerpt[:200]}")
    return {"status": status, "body": excerpt}


@functools.lru_cache(maxsize=4)
def _policy(text: str) -> HttpPolicy:
    """The worker's policy, parsed once (the environment variable is set at spawn)."""
    return HttpPolicy.from_environ({POLICY_VARIABLE: text} if text else {})


def _origin_of(url: str) -> Origin | None:
    """The origin of a well-formed http(s) URL (the configured one is trusted); None otherwise."""
    try:
        return _checked_origin(url)
    except UrlRefused:
        return None


@functools.lru_cache(maxsize=256)
def _checked_origin(url: str) -> Origin:
    """`origin(check_url(url))`, worked out once per URL (a service's runs mostly call one URL,
    and each call checks it three times); raises UrlRefused, which is not cached."""
    return origin(check_url(url))


async def send(
    request: HttpRequest,
    timeout_s: float,
    *,
    addresses: AddressPolicy | None = None,
    trusted: Origin | None = None,
) -> tuple[int, bytes]:
    """Send `request` through the worker's pool, following redirects; (status, first bytes of the body).

    `trusted`: the configured URL's origin, connected to without the address check;
    every other hop is checked against `addresses`.
    """
    addresses = addresses if addresses is not None else AddressPolicy()
    what = f"{request.method} {request.url}"
    try:
        async with asyncio.timeout(timeout_s):
            return await _follow(request, addresses, trusted)
    except TimeoutError:
        raise HttpActionError(f"{what}: no complete answer within request_timeout ({timeout_s:g} s)") from None


async def _follow(request: HttpRequest, addresses: AddressPolicy, trusted: Origin | None) -> tuple[int, bytes]:
    first = check_request(request, addresses, trusted)
    for _ in range(MAX_REDIRECTS + 1):
        hop = check_request(request, addresses, trusted)
        if hop != first:
            request = replace(
                request, headers={k: v for k, v in request.headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
            )
        session, owned = _session(addresses, trusted if hop == trusted else None)
        try:
            async with session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                allow_redirects=False,
            ) as response:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    request = _redirected(request, response.status, location)
                    continue
                return response.status, await _read_bounded(response)
        except UrlRefused as e:
            raise HttpActionError(f"{request.method} {request.url} refused: {e}") from None
        except aiohttp.ClientError as e:
            cause = e.__cause__ if isinstance(e.__cause__, UrlRefused) else e
            raise HttpActionError(f"{request.method} {request.url} failed: {cause}") from None
        finally:
            if owned:
                await session.close()
    raise HttpActionError(f"{request.method} {request.url}: more than {MAX_REDIRECTS} redirects")


def _redirected(request: HttpRequest, status: int, location: str) -> HttpRequest:
    url = urljoin(request.url, location)
    if status == 303 or (status in (301, 302) and request.method == "POST"):
        return replace(request, method="GET", url=url, body=None)
    return replace(request, url=url)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_BODY_BYTES:
        chunk = await response.content.read(MAX_BODY_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _PolicyResolver(AbstractResolver):
    """Resolves host names and keeps only the addresses the policy allows (the trusted origin: all)."""

    def __init__(self, addresses: AddressPolicy, trusted: Origin | None) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._addresses = addresses
        self._trusted = trusted

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._trusted is not None and (host.lower(), port) == self._trusted:
            return found
        allowed, refused = self._addresses.split(((socket.AddressFamily(r["family"]), r["host"]) for r in found), port)
        if not allowed:
            raise refusal_error(host, port, refused)
        keep = {text for _, text in allowed}
        return [r for r in found if r["host"] in keep]

    async def close(self) -> None:
        await self._inner.close()


_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[AddressPolicy, Origin | None], aiohttp.ClientSession]
] = weakref.WeakKeyDictionary()


def _session(addresses: AddressPolicy, trusted: Origin | None) -> tuple[aiohttp.ClientSession, bool]:
    """The pool of this worker's long-lived run loop for this policy, else a session for one call (owned: close it)."""
    loop = asyncio.get_running_loop()
    if not is_shared_loop(loop):
        return _new_session(addresses, trusted), True
    pools = _sessions.setdefault(loop, {})
    session = pools.get((addresses, trusted))
    if session is None or session.closed:
        session = pools[(addresses, trusted)] = _new_session(addresses, trusted)
    return session, False


def _new_session(addresses: AddressPolicy, trusted: Origin | None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=PER_HOST_LIMIT, resolver=_PolicyResolver(addresses, trusted)
    )
    # No timeouts of aiohttp's own (its defaults: 300 s in all, 30 s to connect): `send` holds
    # every call to one deadline, request_timeout, which also bounds connecting. Without them
    # a call arms one timer, not three.
    # No cookie jar: each run is a request of its own, and a cookie one receiver set must not
    # ride along on the next run's call (another task's, perhaps another tenant's).
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, timeout=_NO_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar()
    )


_NO_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)


__all__ = ["HttpActionError", "HttpPolicy", "HttpRequest", "build_request", "call", "check_request", "expand", "send"]
