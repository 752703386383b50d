"""The built-in `http` action: call a URL, in a worker process, with a timeout.

Only http:// and https:// are followed, redirects included (urllib would follow
a redirect to another scheme otherwise); at most `MAX_BODY_BYTES` of the
response are read, and an excerpt is the run's result. `${VAR}` in the URL,
headers and body is replaced from the worker's environment.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import Any

from supervise.workers.context import JobContext

MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 2000
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HttpActionError(RuntimeError):
    """The call failed or answered outside `expect_status`."""


def expand(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise HttpActionError(f"${{{name}}} is not set in the service's environment (add it to env)")
        return os.environ[name]

    return _VAR.sub(value, text)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise HttpActionError(f"refusing a redirect to {newurl}: only http and https are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


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
    request = urllib.request.Request(
        expand(url),
        method=method.upper(),
        data=expand(body).encode() if body is not None else None,
        headers={k: expand(v) for k, v in (headers or {}).items()},
    )
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            status = int(response.status)
            data = response.read(MAX_BODY_BYTES)
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read(MAX_BODY_BYTES)
    except (urllib.error.URLError, OSError) as e:
        raise HttpActionError(f"{method.upper()} {url} failed: {getattr(e, 'reason', e)}") from None
    excerpt = data.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    print(f"{method.upper()} {url} -> {status}", flush=True)
    if not low <= status <= high:
        raise HttpActionError(f"{method.upper()} {url} answered {status}, expected {low}-{high}: {excerpt[:200]}")
    return {"status": status, "body": excerpt}
