"""The built-in `http` action: call a URL, in a worker process, with a timeout.

Only http:// and https:// are followed, redirects included, and never with
credentials in the URL; at most `MAX_BODY_BYTES` of the response are read, and
an excerpt is the run's result. `${VAR}` in the configured URL, headers and body
is replaced from the worker's environment (never in values a run supplies).
A run's arguments may change only what the service's `allow_run_overrides`
lists (http_policy.py); a URL that is not the configured one, and redirects to
other hosts, reach only addresses the SSRF policy allows (protocol/url_policy.py);
the request is sent within one deadline (http_transport.py).
"""

from __future__ import annotations

import os
import re
import urllib.request

from supervise.protocol.url_policy import UrlRefused, check_url, origin
from supervise.workers.context import JobContext
from supervise.workers.http_policy import HttpPolicy, OverrideRefused
from supervise.workers.http_transport import TransportError, send

MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 2000
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HttpActionError(RuntimeError):
    """The call failed, was refused by the service's policy, or answered outside `expect_status`."""


def expand(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise HttpActionError(f"${{{name}}} is not set in the service's environment (add it to env)")
        return os.environ[name]

    return _VAR.sub(value, text)


def call(
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
    policy = HttpPolicy.from_environ(os.environ)
    headers = headers or {}
    given = {"url": url, "method": method, "headers": headers, "body": body, "expect_status": expect_status}
    try:
        policy.check_overrides({**given, "timeout_s": timeout_s})
    except OverrideRefused as e:
        raise HttpActionError(str(e)) from None

    def final(key: str, value: str) -> str:  # `${VAR}` is expanded in what the config says only
        return expand(value) if policy.from_config(key, value) else value

    final_url = final("url", url)
    try:
        parts = check_url(final_url)
    except UrlRefused as e:
        raise HttpActionError(f"refusing {url}: {e}") from None
    from_config = policy.from_config("headers", headers)
    request = urllib.request.Request(
        final_url,
        method=method.upper(),
        data=final("body", body).encode() if body is not None else None,
        headers={k: expand(v) if from_config else v for k, v in headers.items()},
    )
    trusted = origin(parts) if policy.from_config("url", url) else None
    what = f"{method.upper()} {url}"
    try:
        status, data = send(
            request, addresses=policy.addresses, trusted=trusted, timeout_s=timeout_s, what=what, max_bytes=MAX_BODY_BYTES
        )
    except TransportError as e:
        raise HttpActionError(str(e)) from None
    excerpt = data.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    print(f"{what} -> {status}", flush=True)
    if not low <= status <= high:
        raise HttpActionError(f"{what} answered {status}, expected {low}-{high}: {excerpt[:200]}")
    return {"status": status, "body": excerpt}
