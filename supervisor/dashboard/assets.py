"""Serving the dashboard's files: `/` is the page, `/ui/NAME` its scripts, styles and icon.

The files are read once, at mount, from the package; only those names are
served (no path is ever joined from a request). Every answer carries a strict
Content-Security-Policy: the page runs its own scripts only, talks to its own
origin only, and cannot be framed.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

STATIC = "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _load() -> dict[str, bytes]:
    folder = resources.files("supervise.supervisor.dashboard").joinpath(STATIC)
    out = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            out[entry.name] = entry.read_bytes()
    return out


ASSETS: dict[str, bytes] = _load()
"""Every file the dashboard serves, by name: what the page weighs is the sum of these."""


def mount(app: web.Application) -> None:
    """Add `/` and `/ui/{name}` to the daemon's HTTP application."""
    etags = {name: '"' + hashlib.sha256(body).hexdigest()[:16] + '"' for name, body in ASSETS.items()}

    def answer(request: web.Request, name: str) -> web.Response:
        headers = {**SECURITY_HEADERS, "ETag": etags[name], "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etags[name]:
            return web.Response(status=304, headers=headers)
        suffix = "." + name.rpartition(".")[2]
        return web.Response(body=ASSETS[name], headers={**headers, "Content-Type": CONTENT_TYPES[suffix]})

    async def page(request: web.Request) -> web.Response:
        return answer(request, "index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS or name == "index.html":
            raise web.HTTPNotFound(text=f"no dashboard file {name[:80]!r}")
        return answer(request, name)

    app.router.add_get("/", page)
    app.router.add_get("/ui/{name}", asset)
