"""The built-in `http` action: call a URL, in a worker process, with a timeout.

The call is asynchronous (aiohttp): a worker's runs share one event loop and one
connection pool (at most `PER_HOST_LIMIT` connections to one host), so hundreds
of calls in flight need no threads. Every call carries `Idempotency-Key: <key>`,
the run's idempotency key, the same for every attempt and re-run of one
occurrence, so a receiver can deduplicate. Only http:// and https:// are
followed, redirects included (at most `MAX_REDIRECTS`); at most `MAX_BODY_BYTES`
of the response are read, and an excerpt is the run's result. `${VAR}` in the
URL, headers and body is replaced from the worker's environment.

`build_request` makes the request and `check_request` vets every hop of it
(the first and each redirect): a URL policy wraps or replaces `check_request`.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urljoin

import aiohttp
from supervise.workers.context import JobContext

MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 2000
MAX_REDIRECTS = 10
PER_HOST_LIMIT = 100  # connections to one host at once; more calls wait for one in the pool
IDEMPOTENCY_HEADER = "Idempotency-Key"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpActionError(RuntimeError):
    """The call failed or answered outside `expect_status`."""


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
    ctx: JobContext, url: str, method: str = "GET", headers: Mapping[str, str] | None = None, body: str | None = None
) -> HttpRequest:
    """The request of one run: `${VAR}`s expanded, the idempotency key added (unless the config sets one)."""
    expanded = {k: expand(v) for k, v in (headers or {}).items()}
    key = getattr(ctx, "idempotency_key", None)
    if key and not any(k.lower() == IDEMPOTENCY_HEADER.lower() for k in expanded):
        expanded[IDEMPOTENCY_HEADER] = key
    return HttpRequest(
        method=method.upper(),
        url=expand(url),
        headers=expanded,
        body=expand(body).encode() if body is not None else None,
    )


def check_request(request: HttpRequest) -> None:
    """Refuse a request the action must not send (raises HttpActionError); every hop passes here."""
    if not request.url.lower().startswith(("http://", "https://")):
        raise HttpActionError(f"refusing {request.url}: only http and https are followed")


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
    request = build_request(ctx, url, method, headers, body)
    status, data = await send(request, timeout_s)
    excerpt = data.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    if not low <= status <= high:
        raise HttpActionError(f"{request.method} {url} answered {status}, expected {low}-{high}: {excerpt[:200]}")
    return {"status": status, "body": excerpt}


async def send(request: HttpRequest, timeout_s: float) -> tuple[int, bytes]:
    """Send `request` through the worker's pool, following redirects; (status, first bytes of the body)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    session, owned = _session()
    try:
        for _ in range(MAX_REDIRECTS + 1):
            check_request(request)
            try:
                async with session.request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    data=request.body,
                    allow_redirects=False,
                    timeout=timeout,
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECTS and location:
                        request = _redirected(request, response.status, location)
                        continue
                    return response.status, await _read_bounded(response)
            except TimeoutError:
                raise HttpActionError(f"{request.method} {request.url} failed: no answer within {timeout_s:g} s") from None
            except aiohttp.ClientError as e:
                raise HttpActionError(f"{request.method} {request.url} failed: {e}") from None
        raise HttpActionError(f"{request.method} {request.url}: more than {MAX_REDIRECTS} redirects")
    finally:
        if owned:
            await session.close()


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


_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def _session() -> tuple[aiohttp.ClientSession, bool]:
    """The pool of this worker's long-lived run loop, else a session for one call (owned: close it)."""
    from supervise.workers.executor import is_shared_loop

    loop = asyncio.get_running_loop()
    if not is_shared_loop(loop):
        return _new_session(), True
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _sessions[loop] = _new_session()
    return session, False


def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=PER_HOST_LIMIT))


__all__ = ["HttpActionError", "HttpRequest", "build_request", "call", "check_request", "expand", "send"]
