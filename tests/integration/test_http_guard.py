"""The HTTP endpoint's connection limits against a real aiohttp server: count, request deadline, idle timeout."""

from __future__ import annotations

import asyncio
import time

from supervise.supervisor.daemon.http import HttpServer, split_host_port
from supervise.supervisor.daemon.http_guard import ConnectionGuard


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it stayed open."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(1024), seconds):
            pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - started


async def serve(guard: ConnectionGuard) -> tuple[HttpServer, str, int]:
    server = HttpServer(
        "127.0.0.1:0", health=lambda: (True, {"status": "ok"}), scrape=lambda accept: (b"", "text/plain")
    )
    server.guard = guard
    host, port = split_host_port(await server.start())
    return server, host, port


async def get(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def test_idle_and_dripping_connections_are_closed_and_answers_still_go_out() -> None:
    async def scenario() -> None:
        server, host, port = await serve(ConnectionGuard(max_connections=10, request_timeout_s=1.0, idle_timeout_s=1.0))
        try:
            idle_reader, idle_writer = await asyncio.open_connection(host, port)
            drip_reader, drip_writer = await asyncio.open_connection(host, port)

            async def drip() -> None:
                for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
                    drip_writer.write(bytes([byte]))
                    await asyncio.sleep(0.1)

            dripping = asyncio.create_task(drip())
            idle_closed, drip_closed = await asyncio.gather(
                closed_within(idle_reader, 5), closed_within(drip_reader, 5)
            )
            dripping.cancel()
            assert idle_closed is not None and 0.8 < idle_closed < 3, idle_closed
            assert drip_closed is not None and drip_closed < 3, drip_closed  # despite a byte every 0.1 s
            assert b"200 OK" in await get(host, port)
            assert server.guard.timed_out == 2 and server.guard.active == 0
            idle_writer.close()
            drip_writer.close()
        finally:
            await server.close()

    asyncio.run(scenario())


def test_connections_past_the_limit_are_closed_at_once() -> None:
    async def scenario() -> None:
        server, host, port = await serve(ConnectionGuard(max_connections=3, request_timeout_s=5.0, idle_timeout_s=1.0))
        try:
            held = [await asyncio.open_connection(host, port) for _ in range(3)]
            extra_reader, extra_writer = await asyncio.open_connection(host, port)
            assert (await closed_within(extra_reader, 2)) is not None  # refused right after accept
            assert server.guard.refused >= 1 and server.guard.active == 3
            for reader, _ in held:
                await closed_within(reader, 5)  # the idle timeout frees the slots
            assert b"200 OK" in await get(host, port)
            for _, writer in [*held, (extra_reader, extra_writer)]:
                writer.close()
        finally:
            await server.close()

    asyncio.run(scenario())


def test_a_keep_alive_client_gets_several_answers_on_one_connection() -> None:
    async def scenario() -> None:
        server, host, port = await serve(ConnectionGuard(max_connections=3, request_timeout_s=1.0, idle_timeout_s=1.0))
        try:
            reader, writer = await asyncio.open_connection(host, port)
            for _ in range(3):
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(
                    next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                        b":"
                    )[1]
                )
                await reader.readexactly(length)
                assert head.startswith(b"HTTP/1.1 200")
                await asyncio.sleep(0.6)  # under the idle timeout between requests
            writer.close()
        finally:
            await server.close()

    asyncio.run(scenario())
