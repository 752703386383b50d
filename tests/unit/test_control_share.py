"""A control client's share of the requests in flight, and its heavy frames' bounded cost (real ZeroMQ sockets)."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio

from supervise.protocol.codec import decode_reply, encode_request, pack, unpack
from supervise.protocol.errors import DecodeError
from supervise.protocol.limits import REQUEST_LIMITS
from supervise.supervisor.daemon.commands import Command
from supervise.supervisor.daemon.control import MAX_IN_FLIGHT_PER_PEER, ControlServer


def test_one_client_cannot_take_every_slot_and_another_is_still_served() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        release = asyncio.Event()

        async def call(command: Command, args: dict[str, object]) -> object:
            if command.name == "status":
                await release.wait()  # a slow command: holds its slot
            return {"ok": command.name}

        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind("inproc://control")
        greedy, polite = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        greedy.connect("inproc://control")
        polite.connect("inproc://control")
        server = ControlServer(router, call)
        serving = asyncio.create_task(server.serve())
        try:
            for i in range(MAX_IN_FLIGHT_PER_PEER + 8):
                await greedy.send(encode_request(i, "status", {}))
            await polite.send(encode_request("p", "ping", {}))
            polite_reply = decode_reply(await asyncio.wait_for(polite.recv(), 5))
            limited = [decode_reply(await asyncio.wait_for(greedy.recv(), 5)) for _ in range(8)]
            release.set()
            rest = [decode_reply(await asyncio.wait_for(greedy.recv(), 5)) for _ in range(MAX_IN_FLIGHT_PER_PEER)]
            return [r.error_code or "ok" for r in limited + rest], ["ok" if polite_reply.ok else "error"]
        finally:
            await server.close()
            router.close(linger=0)
            serving.cancel()
            greedy.close(linger=0)
            polite.close(linger=0)
            ctx.term()

    greedy, polite = asyncio.run(scenario())
    assert polite == ["ok"]
    assert greedy.count("rate_limited") == 8 and greedy.count("ok") == MAX_IN_FLIGHT_PER_PEER


def test_a_frame_with_too_many_values_is_refused_quickly() -> None:
    frame = pack(
        {"v": 1, "id": 1, "cmd": "status", "args": {"name": [[[1] * 1000] * 30] * 34}}
    )  # a million values in 1 MB
    started = time.perf_counter()
    with pytest.raises(DecodeError, match=f"request holds more than {REQUEST_LIMITS.max_objects} values"):
        unpack(frame)
    assert time.perf_counter() - started < 0.5  # was 1.4 s of walking, node by node
    assert unpack(pack({"a": [[1] * 1000] * 32})) == {"a": [[1] * 1000] * 32}  # 32 032 values: within the limit


def test_the_value_walk_still_rejects_timestamps_bin_keys_and_depth() -> None:
    import msgpack

    with pytest.raises(DecodeError, match="extension types"):
        unpack(msgpack.packb({"a": [msgpack.Timestamp(1, 0)]}))
    with pytest.raises(DecodeError, match="map keys must be strings, got binary"):
        unpack(msgpack.packb({"a": {b"k": 1}}))
    with pytest.raises(DecodeError, match="nesting exceeds depth 8"):
        unpack(pack({"a": [[[[[[[[1]]]]]]]]}))
    assert unpack(pack({"a": [[[[[[[1]]]]]]]})) == {"a": [[[[[[[1]]]]]]]}


def test_large_frames_beyond_a_clients_budget_are_refused_without_decoding() -> None:
    heavy = encode_request(1, "status", {"name": [[[1] * 1000] * 30] * 34})  # about 1 MiB

    async def scenario() -> tuple[list[str | None], list[str | None]]:
        async def call(command: str, args: dict[str, object]) -> object:
            return {}

        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind("inproc://budget")
        greedy, other = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        greedy.connect("inproc://budget")
        other.connect("inproc://budget")
        server = ControlServer(router, call)
        serving = asyncio.create_task(server.serve())
        try:
            for _ in range(10):
                await greedy.send(heavy)
            await other.send(heavy)
            mine = [decode_reply(await asyncio.wait_for(greedy.recv(), 10)).error_code for _ in range(10)]
            theirs = [decode_reply(await asyncio.wait_for(other.recv(), 10)).error_code]
            return mine, theirs
        finally:
            await server.close()
            router.close(linger=0)
            serving.cancel()
            greedy.close(linger=0)
            other.close(linger=0)
            ctx.term()

    mine, theirs = asyncio.run(scenario())
    # A 4 MiB burst is decoded, then 2 MiB a second: most of the rest is refused undecoded
    # (how many depends on how long the four decodes took).
    assert mine[:4] == ["too_large"] * 4 and "rate_limited" in mine and set(mine) == {"too_large", "rate_limited"}
    assert theirs == ["too_large"]  # another client's budget is its own
