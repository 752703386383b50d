"""The web dashboard: static pages at `/` of the daemon's HTTP server, a client of `/api/v1` only.

Everything the browser loads ships in this package (`static/`): no build step,
nothing from the internet. The page's scripts call `/api/v1` with the session
cookie that `POST /api/v1/session` sets; the reference is docs/dashboard.md.
"""

from __future__ import annotations

from supervise.supervisor.dashboard.assets import ASSETS, mount

__all__ = ["ASSETS", "mount"]
