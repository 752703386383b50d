"""An aiohttp resolver that keeps only the addresses an `AddressPolicy` allows.

Used for requests the daemon itself makes to a URL a client gave it (a task's
own webhook): the name is resolved once, the refused addresses dropped, and the
connection made to what is left, so DNS rebinding gains nothing.
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from supervise.protocol.url_policy import AddressPolicy, refusal_error


class PolicyResolver(AbstractResolver):
    """Resolves host names and keeps only the addresses `policy` allows; raises `UrlRefused` when none is."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed, refused = self._policy.split(((socket.AddressFamily(r["family"]), r["host"]) for r in found), port)
        if not allowed:
            raise refusal_error(host, port, refused)
        keep = {text for _, text in allowed}
        return [r for r in found if r["host"] in keep]

    async def close(self) -> None:
        await self._inner.close()
