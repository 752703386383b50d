"""The built-in `http` action: call a URL, in a worker process, within a deadline.

The supervisor passes the service's configured request and its policy in
`SUPERVISE_HTTP_POLICY` (JSON): what a run's arguments may override
(`allow_run_overrides`), and the address policy (`block_private_addresses`,
`allow_addresses`). Before anything is sent:

- a run argument that changes a key not listed in `allow_run_overrides` fails
  the run; `${VAR}` is expanded (from the worker's environment) in configured
  values only, never in values a run supplied;
- the final URL must be http:// or https:// without credentials;
- a URL that is not the configured one, and every redirect to another host, may
  reach only addresses the policy allows, checked after DNS resolution; the
  connection goes to exactly the addresses checked.

`request_timeout` is one deadline for the whole request: connecting, every
redirect, the headers and the body. At most `MAX_BODY_BYTES` of the response
are read; an excerpt is the run's result.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Self

from supervise.protocol.url_policy import (
    POLICY_VARIABLE,
    AddressPolicy,
    UrlRefused,
    check_url,
    origin,
    parse_allow_list,
)
from supervise.workers.context import JobContext

MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 2000
OVERRIDABLE: Final = ("url", "method", "headers", "body")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CREDENTIAL_HEADERS: Final = ("Authorization", "Proxy-authorization", "Cookie")


class HttpActionError(RuntimeError):
    """The call failed, was refused by the policy, or answered outside `expect_status`."""


def expand(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise HttpActionError(f"${{{name}}} is not set in the service's environment (add it to env)")
        return os.environ[name]

    return _VAR.sub(value, text)


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """The service's configured request and what a run may change of it."""

    configured: Mapping[str, Any] | None = None  # None: nothing is known to come from the config
    allow_run_overrides: frozenset[str] = frozenset()
    addresses: AddressPolicy = field(default_factory=AddressPolicy)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HttpPolicy:
        text = environ.get(POLICY_VARIABLE)
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            configured=data.get("configured"),
            allow_run_overrides=frozenset(data.get("allow_run_overrides", ())),
            addresses=AddressPolicy(
                block_private=bool(data.get("block_private_addresses", True)),
                allow=parse_allow_list(data.get("allow_addresses", [])),
            ),
        )

    def from_config(self, key: str, value: object) -> bool:
        """True when `value` is what the config says for `key` (so it may be expanded and trusted)."""
        return self.configured is not None and key in self.configured and self.configured[key] == value

    def check_overrides(self, given: Mapping[str, object]) -> None:
        """Refuse a run argument that changes a configured key not listed in `allow_run_overrides`."""
        if self.configured is None:
            return
        for key, value in given.items():
            if self.from_config(key, value) or key in self.allow_run_overrides:
                continue
            allowed = ", ".join(sorted(self.allow_run_overrides)) or "none"
            hint = f' (allow_run_overrides = ["{key}"] allows it)' if key in OVERRIDABLE else ""
            raise HttpActionError(
                f'run argument "{key}" may not change the configured value; this service allows '
                f"overrides of: {allowed}{hint}"
            )


class _Deadline:
    """One deadline for a whole request: when it passes, every socket of the request is shut down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Self:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("request_timeout reached")
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # Wakes a recv() blocked in another thread (close() would not); the base class's
        # method, so that a TLS socket is shut down underneath its TLS layer too.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Connector:
    """Opens the request's TCP connections: through the address policy unless the host is trusted."""

    def __init__(self, policy: AddressPolicy, trusted: tuple[str, int] | None, deadline: _Deadline) -> None:
        self._policy = policy
        self._trusted = trusted
        self._deadline = deadline

    def connect(self, address: tuple[str, int], timeout: object = None, source_address: object = None) -> socket.socket:
        host, port = address
        if self._trusted is not None and (host.lower(), port) == self._trusted:
            sock = socket.create_connection(address, timeout=self._deadline.remaining())
        else:
            sock = self._connect_checked(host, port)
        self._deadline.watch(sock)
        return sock

    def _connect_checked(self, host: str, port: int) -> socket.socket:
        error: OSError | None = None
        for family, sockaddr in self._policy.resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self._deadline.remaining())
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                error = e
        assert error is not None
        raise error

    def watch(self, sock: socket.socket) -> None:
        self._deadline.watch(sock)


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, *, connector: _Connector, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._connector = connector
        self._create_connection = connector.connect  # the hook http.client connects through

    def connect(self) -> None:
        super().connect()
        self._connector.watch(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, *, connector: _Connector, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._connector = connector
        self._create_connection = connector.connect

    def connect(self) -> None:
        super().connect()
        self._connector.watch(self.sock)  # the TLS socket, which replaced the TCP one


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connector: _Connector) -> None:
        super().__init__()
        self._connector = connector

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, connector=self._connector), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connector: _Connector) -> None:
        super().__init__()
        self._connector = connector

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_HTTPSConnection, connector=self._connector)
        return self.do_open(connection, req, context=self._context)  # type: ignore[attr-defined]


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a plain http(s) URL; credentials never go to another host."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            target = check_url(newurl)
        except UrlRefused as e:
            raise HttpActionError(f"refusing a redirect to {newurl}: {e}") from None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(target) != origin(urllib.parse.urlsplit(req.full_url)):
            for name in _CREDENTIAL_HEADERS:
                new.remove_header(name)
        return new


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
    policy = HttpPolicy.from_environ(os.environ)
    given: dict[str, object] = {"url": url, "method": method, "headers": headers or {}, "body": body}
    given.update(expect_status=expect_status, timeout_s=timeout_s)
    policy.check_overrides({k: v for k, v in given.items() if policy.configured is None or k in policy.configured})

    def final(key: str, value: str) -> str:
        return expand(value) if policy.from_config(key, value) else value

    low, high = expect_status or [200, 299]
    final_url = final("url", url)
    try:
        parts = check_url(final_url)
    except UrlRefused as e:
        raise HttpActionError(f"refusing {url}: {e}") from None
    request = urllib.request.Request(
        final_url,
        method=method.upper(),
        data=final("body", body).encode() if body is not None else None,
        headers={k: expand(v) if policy.from_config("headers", headers) else v for k, v in (headers or {}).items()},
    )
    trusted = origin(parts) if policy.from_config("url", url) else None
    with _Deadline(timeout_s) as deadline:
        connector = _Connector(policy.addresses, trusted, deadline)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _CheckedHTTPHandler(connector),
            _CheckedHTTPSHandler(connector),
            _CheckedRedirects,
        )
        status, data = _send(opener, request, deadline, f"{method.upper()} {url}")
    excerpt = data.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    print(f"{method.upper()} {url} -> {status}", flush=True)
    if not low <= status <= high:
        raise HttpActionError(f"{method.upper()} {url} answered {status}, expected {low}-{high}: {excerpt[:200]}")
    return {"status": status, "body": excerpt}


def _send(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, deadline: _Deadline, what: str
) -> tuple[int, bytes]:
    try:
        try:
            with opener.open(request, timeout=deadline.seconds) as response:
                status, data = int(response.status), response.read(MAX_BODY_BYTES)
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read(MAX_BODY_BYTES)
    except UrlRefused as e:
        raise HttpActionError(f"{what} refused: {e}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if deadline.expired:
            raise HttpActionError(f"{what}: no complete answer within request_timeout ({deadline.seconds:g} s)") from None
        raise HttpActionError(f"{what} failed: {getattr(e, 'reason', e)}") from None
    if deadline.expired:
        raise HttpActionError(f"{what}: no complete answer within request_timeout ({deadline.seconds:g} s)")
    return status, data
