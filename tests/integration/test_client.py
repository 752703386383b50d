"""Client and AsyncClient against a real ZeroMQ ROUTER server running in a thread."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq

from supervise.protocol import (
    AsyncClient,
    Client,
    ClientTimeout,
    ErrorCode,
    ProtocolError,
    RemoteError,
    Request,
    decode_request,
    default_endpoints,
    encode_error,
    encode_reply,
    split_envelope,
)
from supervise.protocol.endpoints import check_ipc_endpoint

SHORT_S = 0.2  # client timeout for the tests that expect one


@dataclass
class Seen:
    """One request as the server received it."""

    identity: bytes
    body_frames: int
    request: Request


@dataclass
class Server:
    """A ROUTER answering like a tiny supervisor, with commands that misbehave on purpose.

    echo      -> {"cmd": ..., "args": ...}, after `args["noise"]` replies with other ids
    fail      -> error not_found
    silent    -> never answered
    late      -> answered only when the next request arrives, both to the original
                 peer and (as a stale reply) to whoever sent that next request
    flaky     -> ignored `args["drop"]` times (counted per request id), then echoed
    """

    endpoint: str
    seen: list[Seen] = field(default_factory=list)
    _held: list[tuple[list[bytes], Request]] = field(default_factory=list)
    _drops: dict[str | int, int] = field(default_factory=dict)

    def handle(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        envelope, body = split_envelope(frames)
        try:
            request = decode_request(body)
        except ProtocolError as error:
            sock.send_multipart([*envelope, encode_error(error.request_id, error.code, error.message)])
            return
        self.seen.append(Seen(envelope[0], len(body), request))
        for held_envelope, held in self._held:
            stale = encode_reply(held.id, {"cmd": held.cmd, "stale": True})
            sock.send_multipart([*held_envelope, stale])
            sock.send_multipart([*envelope, stale])
        self._held.clear()
        if request.cmd == "silent":
            return
        if request.cmd == "late":
            self._held.append((envelope, request))
            return
        if request.cmd == "fail":
            reply = encode_error(request.id, ErrorCode.NOT_FOUND, 'no service named "web2"; known: web')
        elif request.cmd == "flaky" and self._drop(request):
            return
        else:
            noise = request.args.get("noise", 0)
            assert isinstance(noise, int)
            for n in range(noise):
                sock.send_multipart([*envelope, encode_reply(f"other-{n}", "not yours")])
            reply = encode_reply(request.id, {"cmd": request.cmd, "args": request.args})
        sock.send_multipart([*envelope, reply])

    def _drop(self, request: Request) -> bool:
        """Whether to ignore this copy of a "flaky" request (the first `drop` are)."""
        limit = request.args["drop"]
        assert isinstance(limit, int)
        dropped = self._drops.get(request.id, 0)
        self._drops[request.id] = dropped + 1
        return dropped < limit


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its paths are too long for a UNIX socket (107 bytes).
    path = Path(tempfile.mkdtemp(prefix="sv"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(state_dir: Path) -> Iterator[Server]:
    endpoint = default_endpoints(state_dir).control
    assert check_ipc_endpoint(endpoint) is None
    srv = Server(endpoint)
    ctx = zmq.Context()
    ready = threading.Event()
    errors: list[BaseException] = []
    wake = ctx.socket(zmq.PAIR)
    wake.bind("inproc://stop")

    def serve() -> None:
        router = ctx.socket(zmq.ROUTER)
        stop = ctx.socket(zmq.PAIR)
        try:
            router.setsockopt(zmq.LINGER, 0)
            router.bind(endpoint)
            stop.connect("inproc://stop")
            ready.set()
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(stop, zmq.POLLIN)
            while True:
                events = dict(poller.poll())
                if stop in events:
                    return
                srv.handle(router, router.recv_multipart())
        except BaseException as exc:  # surfaced by the fixture, not lost in the thread
            errors.append(exc)
            ready.set()
        finally:
            router.close(linger=0)
            stop.close(linger=0)

    thread = threading.Thread(target=serve, name="test-router")
    thread.start()
    try:
        assert ready.wait(10), "test server did not start"
        assert not errors, errors
        yield srv
    finally:
        wake.send(b"stop")
        thread.join(10)
        wake.close(linger=0)
        ctx.term()
        assert not thread.is_alive(), "test server thread did not stop"
        assert not errors, errors


# --- Client ------------------------------------------------------------------------------


def test_call_returns_the_result(server: Server) -> None:
    with Client(server.endpoint) as client:
        assert client.call("echo", service="web", timeout=2.5) == {
            "cmd": "echo",
            "args": {"service": "web", "timeout": 2.5},
        }
        assert client.call("echo") == {"cmd": "echo", "args": {}}
    assert [s.body_frames for s in server.seen] == [1, 1]  # DEALER: no empty delimiter


def test_request_ids_are_unique_short_strings(server: Server) -> None:
    with Client(server.endpoint) as client, Client(server.endpoint) as other:
        for c in (client, other, client):
            c.call("echo")
    ids = [s.request.id for s in server.seen]
    assert len(set(ids)) == 3
    assert all(isinstance(i, str) and len(i) <= 64 for i in ids)


def test_error_reply_raises_remote_error_with_code_and_message(server: Server) -> None:
    with Client(server.endpoint) as client, pytest.raises(RemoteError) as info:
        client.call("fail")
    assert info.value.code == ErrorCode.NOT_FOUND
    assert info.value.message == 'no service named "web2"; known: web'


def test_no_reply_raises_client_timeout_within_the_deadline(server: Server) -> None:
    with Client(server.endpoint, timeout_s=SHORT_S) as client:
        started = time.monotonic()
        with pytest.raises(ClientTimeout) as info:
            client.call("silent")
        elapsed = time.monotonic() - started
    assert SHORT_S <= elapsed < SHORT_S + 2
    assert f"no reply from supervisor at {server.endpoint} within 0.2 s" in str(info.value)
    assert isinstance(info.value, TimeoutError)


def test_nobody_listening_times_out_instead_of_hanging(state_dir: Path) -> None:
    endpoint = f"ipc://{state_dir}/nobody.sock"
    with Client(endpoint, timeout_s=SHORT_S) as client, pytest.raises(ClientTimeout):
        client.ping()


def test_after_a_timeout_the_next_call_works_and_never_sees_the_late_reply(server: Server) -> None:
    with Client(server.endpoint, timeout_s=SHORT_S) as client:
        with pytest.raises(ClientTimeout):
            client.call("late")
        # The server now answers "late" to its original peer and, as a stale reply,
        # to this request's peer too, before the real answer.
        assert client.call("echo", n=1) == {"cmd": "echo", "args": {"n": 1}}
        assert client.call("echo", n=2) == {"cmd": "echo", "args": {"n": 2}}
    late, first, second = server.seen
    assert late.identity != first.identity == second.identity  # lazy pirate: a new socket


def test_replies_with_another_id_on_the_same_socket_are_discarded(server: Server) -> None:
    with Client(server.endpoint) as client:
        assert client.call("echo", noise=3) == {"cmd": "echo", "args": {"noise": 3}}
        assert client.call("echo") == {"cmd": "echo", "args": {}}


def test_retries_resend_the_same_request_until_answered(server: Server) -> None:
    with Client(server.endpoint, timeout_s=SHORT_S) as client:
        assert client.call("flaky", drop=2, retries=2) == {"cmd": "flaky", "args": {"drop": 2}}
    assert len(server.seen) == 3
    assert len({s.request.id for s in server.seen}) == 1
    assert len({s.identity for s in server.seen}) == 3


def test_running_out_of_retries_says_how_many_attempts(server: Server) -> None:
    with Client(server.endpoint, timeout_s=SHORT_S) as client, pytest.raises(ClientTimeout) as info:
        client.call("silent", retries=1)
    assert info.value.attempts == 2
    assert "(tried 2 times)" in str(info.value)


def test_convenience_methods_send_the_service_or_all(server: Server) -> None:
    with Client(server.endpoint) as client:
        assert client.status() == {"cmd": "status", "args": {}}
        assert client.status("web") == {"cmd": "status", "args": {"name": "web"}}
        assert client.start(all=True) == {"cmd": "start", "args": {"all": True}}
        assert client.stop("web", timeout=3) == {
            "cmd": "stop",
            "args": {"timeout": 3, "name": "web"},
        }
        for name in ("restart", "pause", "resume"):
            assert getattr(client, name)("web") == {"cmd": name, "args": {"name": "web"}}
        assert client.ping() == {"cmd": "ping", "args": {}}
        assert client.shutdown() == {"cmd": "shutdown", "args": {}}


def test_an_argument_named_retries_goes_through_request(server: Server) -> None:
    with Client(server.endpoint) as client:
        assert client.request("echo", {"retries": 3}) == {"cmd": "echo", "args": {"retries": 3}}


def test_an_oversize_request_is_refused_before_sending(server: Server) -> None:
    with Client(server.endpoint) as client, pytest.raises(ProtocolError) as info:
        client.call("echo", blob=[b"x" * 60_000] * 20)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert "exceeds the supervisor's limit of 1048576 bytes" in info.value.message
    assert server.seen == []


def test_a_closed_client_refuses_calls(server: Server) -> None:
    client = Client(server.endpoint)
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="is closed"):
        client.ping()


# --- AsyncClient -------------------------------------------------------------------------


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_async_call_returns_the_result_and_raises_remote_errors(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.endpoint) as client:
            assert await client.call("echo", service="web") == {
                "cmd": "echo",
                "args": {"service": "web"},
            }
            assert await client.status("web") == {"cmd": "status", "args": {"name": "web"}}
            with pytest.raises(RemoteError) as info:
                await client.call("fail")
            assert info.value.code == "not_found"

    run(main)


def test_async_timeout_then_next_call_works_without_the_late_reply(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.endpoint, timeout_s=SHORT_S) as client:
            started = time.monotonic()
            with pytest.raises(ClientTimeout):
                await client.call("late")
            assert time.monotonic() - started < SHORT_S + 2
            assert await client.call("echo", n=1) == {"cmd": "echo", "args": {"n": 1}}

    run(main)
    late, after = server.seen
    assert late.identity != after.identity


def test_async_concurrent_calls_each_get_their_own_reply(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.endpoint) as client:
            results = await asyncio.gather(*(client.call("echo", n=i) for i in range(20)))
        assert results == [{"cmd": "echo", "args": {"n": i}} for i in range(20)]

    run(main)


def test_async_cancelled_call_does_not_confuse_the_next(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.endpoint, timeout_s=5) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.call("late"), SHORT_S)
            assert await client.call("echo") == {"cmd": "echo", "args": {}}

    run(main)


def test_async_retries_and_timeouts(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.endpoint, timeout_s=SHORT_S) as client:
            assert await client.call("flaky", drop=1, retries=1) == {
                "cmd": "flaky",
                "args": {"drop": 1},
            }
            with pytest.raises(ClientTimeout) as info:
                await client.call("silent", retries=1)
            assert info.value.attempts == 2

    run(main)
