"""Property tests of the control dispatcher (reliability.md F-26, §4.1; issue 7 "fuzzing").

Whatever a client sends, `ControlServer` either gets a valid (command, args) out
of it, from the explicit `COMMANDS` table and within the command's schema, or a
`ProtocolError` with a known `ErrorCode` that encodes into a valid error reply.
No other exception, no handler reached by a bad request, never a missing reply.

Bounded for CI; `--hypothesis-profile=long` (tests/unit/conftest.py) runs many more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervise.protocol.codec import decode_reply, encode_request, split_envelope
from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.daemon.commands import COMMANDS, Command, _has_type
from supervise.supervisor.daemon.control import ControlServer

PARSE_CODES = {
    ErrorCode.MALFORMED,
    ErrorCode.TOO_LARGE,
    ErrorCode.VERSION,
    ErrorCode.BAD_REQUEST,
    ErrorCode.UNKNOWN_COMMAND,
    ErrorCode.BAD_ARGS,
}
"""What parsing alone may answer; NOT_FOUND, CONFLICT... come from handlers, INTERNAL never from input."""


def examples(ci: int) -> int:
    """`ci` examples normally; the loaded profile's count when it asks for more (`long`)."""
    return max(ci, settings().max_examples)


def fuzz_settings(ci: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples(ci),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- strategies ------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # what msgpack can carry
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | st.binary(max_size=40)
)
comparable = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | text
"""Scalars equal to themselves (no NaN), for round-trip comparisons."""
keys = text | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.binary(max_size=8) | st.none()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)
wire_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10,
)
"""Values a decoder accepts as such (string keys); only their depth can be over the limit."""
HOSTILE_NAMES = [
    "__class__",
    "_internal",
    "a.b",
    "__init__",
    "handler",
    "validate",
    "COMMANDS",
    "",
    "Status",
    "stop ",
    "help\x00",
]
command_names = st.sampled_from(sorted(COMMANDS)) | st.sampled_from(HOSTILE_NAMES) | text
arg_names = st.sampled_from(sorted({a for c in COMMANDS.values() for a in c.args})) | text
request_ids = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=70) | values

requests = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | values,
        "id": request_ids,
        "cmd": command_names | values,
        "args": st.dictionaries(arg_names, values, max_size=5) | values,
        "agrs": values,  # an unknown top-level field
    },
)
"""Request-shaped maps: mostly near-valid, so the search reaches every check of every command."""

well_formed = st.builds(
    lambda rid, cmd, args: {"v": 1, "id": rid, "cmd": cmd, "args": args},
    st.integers(min_value=0, max_value=2**31) | st.text(max_size=64),
    st.sampled_from(sorted(COMMANDS)),
    st.dictionaries(arg_names, wire_values, max_size=4),
)
"""Valid envelopes of real commands with arbitrary arguments: fuzzes `Command.validate`."""


def pack(obj: object) -> bytes:
    frame: bytes = msgpack.packb(obj, use_bin_type=True)
    return frame


bodies = (
    st.lists(st.binary(max_size=200), max_size=4)  # anything, in any number of frames
    | requests.map(lambda r: [pack(r)])
    | well_formed.map(lambda r: [pack(r)])
    | st.tuples(requests.map(pack), st.binary(min_size=1, max_size=8)).map(lambda t: [t[0] + t[1]])  # trailing bytes
    | requests.map(pack).flatmap(lambda f: st.integers(0, max(0, len(f) - 1)).map(lambda n: [f[:n]]))  # truncated
    | st.lists(requests.map(pack), min_size=2, max_size=4)  # more than one body frame
)

# -- the properties ----------------------------------------------------------------------------------

SERVER = ControlServer(None, None)  # type: ignore[arg-type]  # _parse touches neither the socket nor the handler


def check_parse(body: list[bytes]) -> tuple[str | int, Command, dict[str, object]] | ProtocolError:
    """Parse like the server does and check the outcome; returns it for further checks."""
    try:
        request_id, command, args = SERVER._parse(body)
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode) and e.code in PARSE_CODES, e
        assert isinstance(e.message, str) and e.message
        reply = decode_reply(SERVER._error_reply(e, None))  # always encodable, always a valid reply
        assert reply.ok is False and reply.error_code == e.code and reply.error_message == e.message
        return e
    assert COMMANDS.get(command.name) is command  # only ever an entry of the explicit table
    assert isinstance(request_id, (str, int)) and not isinstance(request_id, bool)
    assert set(args) <= set(command.args)
    for name, spec in command.args.items():
        if spec.required:
            assert name in args
        if name in args:
            assert _has_type(args[name], spec.type)
            if isinstance(args[name], (int, float)) and not isinstance(args[name], bool):
                assert spec.min is None or args[name] >= spec.min
                assert spec.max is None or args[name] <= spec.max
    return request_id, command, args


@fuzz_settings(500)
@given(st.binary(max_size=300))
def test_any_byte_string_parses_or_gets_a_known_error(frame: bytes) -> None:
    check_parse([frame])


@fuzz_settings(300)
@given(bodies)
def test_any_body_parses_or_gets_a_known_error(body: list[bytes]) -> None:
    check_parse(body)


@fuzz_settings(300)
@given(well_formed)
def test_known_commands_with_arbitrary_args_validate_or_get_bad_args(request: dict[str, Any]) -> None:
    outcome = check_parse([pack(request)])
    if isinstance(outcome, ProtocolError) and outcome.code is ErrorCode.MALFORMED:
        assert "nesting exceeds depth" in outcome.message, outcome  # the only way such a request is malformed
    elif isinstance(outcome, ProtocolError):
        assert outcome.code is ErrorCode.BAD_ARGS, outcome
        assert outcome.request_id == request["id"]  # the reply echoes the id it could read
        assert outcome.message.startswith(request["cmd"] + ":")


@fuzz_settings(300)
@given(st.sampled_from(sorted(COMMANDS)), st.data())
def test_valid_requests_of_every_command_parse(name: str, data: st.DataObject) -> None:
    """The converse: arguments drawn from each command's own schema are accepted as they are."""
    command = COMMANDS[name]
    args: dict[str, object] = {}
    for arg, spec in command.args.items():
        if spec.required or data.draw(st.booleans()):
            args[arg] = data.draw(_value_of(spec.type, spec.min, spec.max))
    frame = encode_request(7, name, args)
    outcome = check_parse([frame])
    assert not isinstance(outcome, ProtocolError), outcome
    assert outcome[1] is command and outcome[2] == args


def _value_of(kind: type | tuple[type, ...], low: float | None, high: float | None) -> st.SearchStrategy[object]:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    options: list[st.SearchStrategy[object]] = []
    for k in kinds:
        if k is bool:
            options.append(st.booleans())
        elif k is int:
            options.append(
                st.integers(
                    min_value=int(low) if low is not None else -(2**63),
                    max_value=int(high) if high is not None else 2**63,
                )
            )
        elif k is float:
            options.append(st.floats(min_value=low, max_value=high, allow_nan=False))
        elif k is str:
            options.append(text)
        elif k is dict:
            options.append(st.dictionaries(text, comparable, max_size=4))
        elif k is list:
            options.append(st.lists(comparable, max_size=4))
    return st.one_of(options)


class FakeRouter:
    """Just enough of a zmq.asyncio ROUTER for `ControlServer.serve`: queued input, recorded output."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        self._incoming = list(messages)
        self.sent: list[list[bytes]] = []
        self.closed = False

    async def recv_multipart(self, copy: bool = True) -> list[bytes] | list[zmq.Frame]:
        await asyncio.sleep(0)  # like a real socket, let other tasks (the handlers) run
        if not self._incoming:
            self.closed = True
            raise zmq.ZMQError(zmq.ENOTSOCK)
        message = self._incoming.pop(0)
        return message if copy else [zmq.Frame(part) for part in message]

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        return zmq.POLLIN if self._incoming else 0

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> asyncio.Future[None]:
        self.sent.append(frames)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@fuzz_settings(100)
@given(st.lists(bodies, min_size=1, max_size=6))
def test_the_serve_loop_replies_once_to_everything_and_only_valid_requests_reach_a_handler(
    batch: list[list[bytes]],
) -> None:
    handled: list[tuple[str, dict[str, object]]] = []

    async def call(command: Command, args: dict[str, object]) -> object:
        handled.append((command.name, args))
        return {"ok": command.name}

    async def scenario() -> FakeRouter:
        router = FakeRouter([[f"peer{i}".encode(), *body] for i, body in enumerate(batch)])
        server = ControlServer(router, call)  # type: ignore[arg-type]
        await server.serve()  # returns when the fake socket "closes"
        for _ in range(100):
            if not server._tasks:
                break
            await asyncio.sleep(0)  # let the last handlers finish and reply
        await server.close()
        return router

    router = asyncio.run(scenario())
    assert len(router.sent) == len(batch)  # one reply each, good or bad
    for frames in router.sent:
        assert frames[0].startswith(b"peer")
        decode_reply(frames[-1])
    # Handlers ran for exactly the requests that parse (as the server splits its envelope).
    parsed = [check_parse(split_envelope([b"peer", *body])[1]) for body in batch]
    expected = sorted((o[1].name, repr(o[2])) for o in parsed if not isinstance(o, ProtocolError))
    assert sorted((command, repr(args)) for command, args in handled) == expected
