"""Sending the http action's request with urllib, inside the address policy and one deadline.

- Every TCP connection of the request goes through `_Connector`: to a trusted
  host (the configured URL's) as usual; to any other host only to the addresses
  `AddressPolicy.resolve` allowed, which are exactly the ones connected to.
- Redirects are followed only to plain http(s) URLs (`check_url`), and the
  credential headers are dropped when one leads to another host.
- `request_timeout` is one deadline for everything: when it passes, a timer
  shuts the request's sockets down, which wakes a read blocked on a server that
  sends a byte at a time.
- Proxy settings from the environment are not used.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final, Self

from supervise.protocol.url_policy import AddressPolicy, UrlRefused, check_url, origin

MAX_BODY_BYTES: Final = 64 * 1024
_CREDENTIAL_HEADERS: Final = ("Authorization", "Proxy-authorization", "Cookie")


class TransportError(RuntimeError):
    """The request failed, was refused by the policy, or missed its deadline; the message says which."""


def send(
    request: urllib.request.Request,
    *,
    addresses: AddressPolicy,
    trusted: tuple[str, int] | None,
    timeout_s: float,
    what: str,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[int, bytes]:
    """Send `request`; returns (status, at most `max_bytes` of the body) or raises TransportError.

    Args:
        trusted: (host, port) connected to without the address check (the configured URL's), or None.
        what: names the request in error messages ("POST https://...").
    """
    with _Deadline(timeout_s) as deadline:
        connector = _Connector(addresses, trusted, deadline)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _CheckedHTTPHandler(connector),
            _CheckedHTTPSHandler(connector),
            _CheckedRedirects,
        )
        try:
            try:
                with opener.open(request, timeout=timeout_s) as response:
                    status, data = int(response.status), response.read(max_bytes)
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read(max_bytes)
        except UrlRefused as e:
            raise TransportError(f"{what} refused: {e}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if deadline.expired:
                raise TransportError(f"{what}: no complete answer within request_timeout ({timeout_s:g} s)") from None
            raise TransportError(f"{what} failed: {getattr(e, 'reason', e)}") from None
        if deadline.expired:
            raise TransportError(f"{what}: no complete answer within request_timeout ({timeout_s:g} s)")
    return status, data


class _Deadline:
    """One deadline for a whole request: when it passes, every socket of the request is shut down."""

    def __init__(self, seconds: float) -> None:
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
        raise error if error is not None else OSError(f"no address to connect to for {host}")

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
            raise TransportError(f"refusing a redirect to {newurl}: {e}") from None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(target) != origin(urllib.parse.urlsplit(req.full_url)):
            for name in _CREDENTIAL_HEADERS:
                new.remove_header(name)
        return new
