"""Browser sessions: an API token kept in an HttpOnly cookie, and the CSRF check that goes with it.

A browser signs in by posting a token to `POST /api/v1/session`; the answer sets
two cookies, both `SameSite=Strict; Path=/`:

- `supervise_session`: the token itself, `HttpOnly` (page scripts cannot read it);
- `supervise_csrf`: a random value the page *can* read, and must echo in the
  `X-CSRF-Token` header of every request that may change state (double submit).

A request without `Authorization` but with the session cookie is authenticated by
that cookie; if it is not a GET, its `X-CSRF-Token` must equal the CSRF cookie, or
it is refused with 403. Bearer-token clients are unaffected: a header is never
sent by a browser on its own. `DELETE /api/v1/session` clears both cookies.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

SESSION_COOKIE = "supervise_session"
CSRF_COOKIE = "supervise_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_token(request: web.Request) -> str | None:
    """The token of the session cookie, if the request carries one."""
    value = request.cookies.get(SESSION_COOKIE)
    return value or None


def csrf_ok(request: web.Request) -> bool:
    """True when the `X-CSRF-Token` header matches the CSRF cookie (both present, compared in constant time)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    return bool(cookie) and bool(header) and hmac.compare_digest(cookie.encode(), header.encode())


def _secure(request: web.Request) -> bool:
    """Mark cookies Secure when the browser reached us over HTTPS (directly, or through a TLS proxy)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_session(response: web.StreamResponse, request: web.Request, token: str) -> str:
    """Set both cookies on `response`; returns the new CSRF value."""
    csrf = secrets.token_urlsafe(32)
    secure = _secure(request)
    response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, samesite="Strict", secure=secure)
    response.set_cookie(CSRF_COOKIE, csrf, path="/", httponly=False, samesite="Strict", secure=secure)
    return csrf


def clear_session(response: web.StreamResponse) -> None:
    """Expire both cookies."""
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.del_cookie(name, path="/", samesite="Strict")
