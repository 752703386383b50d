"""A real HTTP client (aiohttp) for the API tests, and a real HTTP server that tasks call."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


async def request_async(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: object = None,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data: bytes | None = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    payload: object = io.BytesIO(data) if data is not None and len(data) > 512 * 1024 else data
    async with session.request(method, url, data=payload, headers=sent) as response:
        return Answer(response.status, dict(response.headers), await response.text())


def call(method: str, url: str, **kwargs: Any) -> Answer:
    """One request through a fresh aiohttp session."""

    async def go() -> Answer:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await request_async(session, method, url, **kwargs)

    return asyncio.run(go())


def read_sse(
    url: str, *, token: str, headers: Mapping[str, str] | None = None, until: Any = None, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """Events of an SSE stream, parsed, until the stream ends or `until(events)` is true."""

    async def go() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        sent = {"Authorization": f"Bearer {token}", **(headers or {})}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url, headers=sent) as response:
                assert response.status == 200, await response.text()
                assert response.headers["Content-Type"].startswith("text/event-stream")
                current: dict[str, Any] = {}
                async for raw_line in response.content:
                    line = raw_line.decode().rstrip("\n")
                    if not line:
                        if current:
                            events.append(current)
                            current = {}
                            if until is not None and until(events):
                                return events
                        continue
                    if line.startswith(":"):
                        continue
                    key, _, value = line.partition(": ")
                    current[key] = json.loads(value) if key == "data" else value
        return events

    return asyncio.run(go())


@dataclass
class Receiver:
    """A plain HTTP server on 127.0.0.1 that records what tasks send it."""

    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            received.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            status = 500 if self.path.startswith("/fail") else 200
            payload = b"received"
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Receiver(server, received)
