"""The codec against reliability.md §4.1: every bad input gets its exact code and message."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervise.protocol import (
    REPLY_LIMITS,
    REQUEST_LIMITS,
    DecodeError,
    ErrorCode,
    Limits,
    ProtocolError,
    RemoteError,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    pack,
    split_envelope,
    unpack,
)
from supervise.protocol.codec import Prepacked, array_header, map_header, pack_float

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "protocol"


def req(**fields: object) -> list[bytes]:
    """One request frame holding exactly `fields` (so tests can leave any out)."""
    return [msgpack.packb(fields)]


def good(**overrides: object) -> list[bytes]:
    fields: dict[str, object] = {"v": 1, "id": "r1", "cmd": "status", "args": {}}
    fields.update(overrides)
    return req(**fields)


def nested_args(depth: int) -> list[bytes]:
    """A request whose args hold lists nested so the whole request has `depth` levels."""
    value: object = 0
    for _ in range(depth - 2):  # the request map is level 1, args level 2
        value = [value]
    return good(args={"x": value})


def rejects(frames: list[bytes]) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_request(frames)
    return info.value


# --- the §4.1 catalogue ------------------------------------------------------------------

CATALOGUE = [
    # (id, frames, code, text the message must contain)
    ("multipart", good() * 3, ErrorCode.MALFORMED, "expected exactly 1 frame, got 3"),
    ("no-frames", [], ErrorCode.MALFORMED, "expected exactly 1 frame, got 0"),
    ("not-msgpack", [b"\xc1\x00"], ErrorCode.MALFORMED, "request is not valid msgpack"),
    ("empty-frame", [b""], ErrorCode.MALFORMED, "request is empty"),
    (
        "truncated",
        [good()[0][:-3]],
        ErrorCode.MALFORMED,
        f"request is not valid msgpack: unexpected end of data at byte {len(good()[0]) - 3}",
    ),
    (
        "trailing-bytes",
        [good()[0] + b"x" * 12],
        ErrorCode.MALFORMED,
        "request has 12 trailing bytes after the msgpack object",
    ),
    ("depth-9", nested_args(9), ErrorCode.MALFORMED, "request nesting exceeds depth 8"),
    ("depth-1024", [b"\x91" * 1023 + b"\x80"], ErrorCode.MALFORMED, "nesting exceeds depth 8"),
    ("depth-100000", [b"\x91" * 100_000 + b"\xc0"], ErrorCode.MALFORMED, "nesting exceeds depth 8"),
    (
        "invalid-utf8",
        [b"\x81\xa1v\xa2\xff\xfe"],
        ErrorCode.MALFORMED,
        "at byte 4 is not valid UTF-8",
    ),
    ("int-key", [msgpack.packb({1: 2})], ErrorCode.MALFORMED, "map keys must be strings, got int"),
    ("nil-key", [b"\x81\xc0\x01"], ErrorCode.MALFORMED, "map keys must be strings, got nil"),
    (
        "bin-key",
        [msgpack.packb({b"k": 1})],
        ErrorCode.MALFORMED,
        "map keys must be strings, got binary",
    ),
    (
        "nested-bin-key",
        good(args={"a": {b"k": 1}}),
        ErrorCode.MALFORMED,
        "map keys must be strings, got binary",
    ),
    (
        "ext-type",
        [msgpack.packb({"v": 1, "x": msgpack.ExtType(5, b"abc")})],
        ErrorCode.MALFORMED,
        "msgpack extension types are not accepted (type 5)",
    ),
    (
        "empty-ext",
        [b"\x81\xa1x\xc7\x00\x05"],
        ErrorCode.MALFORMED,
        "msgpack extension types are not accepted (type 5)",
    ),
    (
        "timestamp",
        good(args={"at": msgpack.Timestamp(1_700_000_000, 0)}),
        ErrorCode.MALFORMED,
        "msgpack extension types are not accepted (type -1)",
    ),
    (
        "bad-timestamp",
        [b"\x81\xa1x\xc7\x03\xffabc"],
        ErrorCode.MALFORMED,
        "msgpack extension types are not accepted (type -1)",
    ),
    ("top-array", [msgpack.packb([1, 2])], ErrorCode.MALFORMED, "request must be a map, got array"),
    ("top-int", [msgpack.packb(7)], ErrorCode.MALFORMED, "request must be a map, got int"),
    (
        "oversize-frame",
        [b"\x00" * (REQUEST_LIMITS.max_frame_bytes + 1)],
        ErrorCode.TOO_LARGE,
        f"request of {REQUEST_LIMITS.max_frame_bytes + 1} bytes exceeds limit 1048576 bytes",
    ),
    (
        "array-over-limit",
        good(args={"x": list(range(5000))}),
        ErrorCode.TOO_LARGE,
        "array of 5000 items exceeds limit 1024",
    ),
    (
        "array-header-5M",
        [b"\xdd\x00\x4c\x4b\x40"],
        ErrorCode.TOO_LARGE,
        "array of 5000000 items exceeds limit 1024",
    ),
    (
        "map-over-limit",
        good(args={str(i): i for i in range(300)}),
        ErrorCode.TOO_LARGE,
        "map of 300 entries exceeds limit 256",
    ),
    (
        "string-over-limit",
        good(args={"s": "x" * 70_000}),
        ErrorCode.TOO_LARGE,
        "string of 70000 bytes exceeds limit 65536",
    ),
    (
        "binary-over-limit",
        good(args={"b": b"x" * 70_000}),
        ErrorCode.TOO_LARGE,
        "binary of 70000 bytes exceeds limit 65536",
    ),
    (
        "version-2",
        good(v=2),
        ErrorCode.VERSION,
        "unsupported protocol version 2; this server speaks 1",
    ),
    ("version-str", good(v="1"), ErrorCode.VERSION, 'unsupported protocol version "1"'),
    ("version-bool", good(v=True), ErrorCode.VERSION, "unsupported protocol version true"),
    ("version-missing", req(id="r1", cmd="ping"), ErrorCode.VERSION, 'no protocol version "v"'),
    (
        "id-missing",
        req(v=1, cmd="ping"),
        ErrorCode.BAD_REQUEST,
        'field "id" must be a string (≤64 chars) or integer',
    ),
    (
        "id-bool",
        good(id=True),
        ErrorCode.BAD_REQUEST,
        'field "id" must be a string (≤64 chars) or integer, got bool',
    ),
    ("id-float", good(id=1.5), ErrorCode.BAD_REQUEST, "or integer, got float"),
    ("id-nil", good(id=None), ErrorCode.BAD_REQUEST, "or integer, got nil"),
    ("id-map", good(id={}), ErrorCode.BAD_REQUEST, "or integer, got map"),
    ("id-65-chars", good(id="x" * 65), ErrorCode.BAD_REQUEST, "got a string of 65 characters"),
    (
        "cmd-missing",
        req(v=1, id="r1"),
        ErrorCode.BAD_REQUEST,
        'field "cmd" is required and must be a string',
    ),
    (
        "cmd-int",
        good(cmd=3),
        ErrorCode.BAD_REQUEST,
        'field "cmd" is required and must be a string, got int',
    ),
    (
        "unknown-field",
        good(agrs={}),
        ErrorCode.BAD_REQUEST,
        'unknown field "agrs"; allowed: v, id, cmd, args',
    ),
    ("args-array", good(args=[1]), ErrorCode.BAD_REQUEST, 'field "args" must be a map'),
    ("args-nil", good(args=None), ErrorCode.BAD_REQUEST, "got nil (omit it or send {}"),
]


@pytest.mark.parametrize(("frames", "code", "text"), [row[1:] for row in CATALOGUE], ids=[row[0] for row in CATALOGUE])
def test_bad_request_gets_the_documented_code_and_message(frames: list[bytes], code: ErrorCode, text: str) -> None:
    error = rejects(frames)
    assert error.code == code
    assert text in error.message, error.message
    assert isinstance(error, ProtocolError)


def test_a_2_gib_length_prefix_is_refused_without_allocating() -> None:
    # The C unpacker sees the data end first, the pure-Python one the limit; both refuse.
    error = rejects([b"\xdb\x80\x00\x00\x00abc"])
    assert (error.code, error.message) in {
        (ErrorCode.MALFORMED, "request is not valid msgpack: unexpected end of data at byte 8"),
        (ErrorCode.TOO_LARGE, "string of 2147483648 bytes exceeds limit 65536"),
    }


def test_utf8_error_names_the_byte_where_the_string_starts() -> None:
    # {"v": 1, "id": 1, "cmd": <2 bad bytes>, "args": {}}: the string's bytes start at 13
    frame = b"\x84\xa1v\x01\xa2id\x01\xa3cmd\xa2\xff\xfe\xa4args\x80"
    assert rejects([frame]).message == "string at byte 13 is not valid UTF-8"


def test_depth_8_is_accepted_and_depth_9_is_not() -> None:
    assert decode_request(nested_args(8)).cmd == "status"
    assert rejects(nested_args(9)).message == "request nesting exceeds depth 8"


def test_limits_at_the_boundary_are_accepted() -> None:
    args = {"a": list(range(1024)), "s": "x" * 65536, "b": b"x" * 65536}
    assert decode_request(good(args=args)).args == args
    wide = {str(i): i for i in range(256)}
    assert decode_request(good(args=wide)).args == wide


# --- the request id is echoed whenever it could be read ----------------------------------


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (good(id="abc", v=2), ErrorCode.VERSION),
        (req(id="abc", cmd="x"), ErrorCode.VERSION),
        (good(id="abc", cmd=None), ErrorCode.BAD_REQUEST),
        (good(id="abc", args="x"), ErrorCode.BAD_REQUEST),
        (good(id="abc", extra=1), ErrorCode.BAD_REQUEST),
        (good(id=42, v=2), ErrorCode.VERSION),
    ],
    ids=["version", "missing-version", "cmd", "args", "unknown-field", "int-id"],
)
def test_errors_after_the_id_was_read_carry_it(frames: list[bytes], code: ErrorCode) -> None:
    error = rejects(frames)
    assert error.code == code
    assert error.request_id == msgpack.unpackb(frames[0])["id"]


def test_errors_before_the_id_could_be_read_carry_none() -> None:
    assert rejects([b"\xc1"]).request_id is None
    assert rejects(good(id=True)).request_id is None


def test_an_unknown_command_is_not_the_codecs_business() -> None:
    assert decode_request(good(cmd="__class__")).cmd == "__class__"


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["r-1", 7, -1, 2**63 - 1, "x" * 64], ids=repr)
def test_request_round_trips(request_id: str | int) -> None:
    frame = encode_request(request_id, "stop", {"service": "web", "timeout": 2.5})
    assert decode_request([frame]) == Request(id=request_id, cmd="stop", args={"service": "web", "timeout": 2.5})


def test_request_without_args_decodes_to_empty_args() -> None:
    assert decode_request(req(v=1, id=1, cmd="ping")).args == {}
    assert decode_request([encode_request(1, "ping")]).args == {}


@pytest.mark.parametrize("request_id", [True, 1.0, None, "x" * 65], ids=repr)
def test_encode_request_refuses_ids_the_server_would_reject(request_id: object) -> None:
    with pytest.raises(ValueError, match="request id must be"):
        encode_request(request_id, "ping")  # type: ignore[arg-type]


def test_reply_round_trips() -> None:
    result = {"services": [{"name": f"s{i}", "pid": i} for i in range(3)], "ok": True}
    assert decode_reply(encode_reply("r1", result)) == Reply(
        id="r1", ok=True, result=result, error_code=None, error_message=None
    )


def test_error_reply_round_trips_and_unwraps_to_remote_error() -> None:
    reply = decode_reply(encode_error(None, ErrorCode.NOT_FOUND, 'no service named "web2"'))
    assert reply == Reply(
        id=None,
        ok=False,
        result=None,
        error_code="not_found",
        error_message='no service named "web2"',
    )
    with pytest.raises(RemoteError) as info:
        reply.unwrap()
    assert (info.value.code, info.value.message) == ("not_found", 'no service named "web2"')


def test_error_reply_is_a_plain_string_code_on_the_wire() -> None:
    wire = msgpack.unpackb(encode_error(5, ErrorCode.MALFORMED, "m"))
    assert wire == {"v": 1, "id": 5, "ok": False, "error": {"code": "malformed", "message": "m"}}


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536])
def test_a_prepacked_reply_is_byte_for_byte_the_reply_of_its_values(count: int) -> None:
    items = [{"name": f"s{i}", "uptime": i / 7, "pid": i or None} for i in range(count)]
    head = {"supervisor": {"pid": 42, "healthy": True}}
    prepacked = Prepacked(head, "services", count, b"".join(pack(item) for item in items))
    assert encode_reply(9, prepacked) == encode_reply(9, {**head, "services": items})


def test_a_prepacked_key_must_not_be_in_its_head() -> None:
    with pytest.raises(ValueError, match='"services" is both in the head'):
        encode_reply(1, Prepacked({"services": 1}, "services", 0, b""))


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -2.25e-300, 1e300, math.inf, -math.inf])
def test_pack_float_is_packs_encoding_of_a_float(value: float) -> None:
    assert pack_float(value) == pack(value)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_headers_are_packs_encoding_of_a_map_and_an_array(n: int) -> None:
    assert map_header(n) + b"".join(pack(f"k{i}") + pack(i) for i in range(n)) == pack({f"k{i}": i for i in range(n)})
    assert array_header(n) + b"".join(pack(i) for i in range(n)) == pack(list(range(n)))


def test_a_status_of_thousands_of_services_decodes_as_a_reply() -> None:
    services = [{"name": f"svc{i}", "state": "running", "pid": 1000 + i} for i in range(5000)]
    big = encode_reply("r", {"services": services})
    assert len(big) > 100_000
    reply = decode_reply(big)
    assert isinstance(reply.result, dict) and len(reply.result["services"]) == 5000


@pytest.mark.parametrize(
    ("wire", "code", "text"),
    [
        ([1], ErrorCode.MALFORMED, "reply must be a map, got array"),
        ({"v": 2, "id": 1, "ok": True}, ErrorCode.VERSION, "this client speaks 1"),
        ({"v": 1, "id": 1, "ok": "yes"}, ErrorCode.MALFORMED, 'reply field "ok" must be a bool'),
        ({"v": 1, "id": 1.5, "ok": True}, ErrorCode.MALFORMED, 'reply field "id"'),
        ({"v": 1, "id": 1, "ok": False}, ErrorCode.MALFORMED, 'reply field "error"'),
        (
            {"v": 1, "id": 1, "ok": False, "error": {"code": 3, "message": "m"}},
            ErrorCode.MALFORMED,
            '"error"',
        ),
    ],
    ids=["not-a-map", "version", "ok-type", "id-type", "error-missing", "error-code-type"],
)
def test_decode_reply_rejects_what_is_not_a_reply(wire: object, code: ErrorCode, text: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_reply(msgpack.packb(wire))
    assert info.value.code == code
    assert text in info.value.message


def test_decode_reply_ignores_fields_added_by_newer_servers() -> None:
    frame = msgpack.packb({"v": 1, "id": "a", "ok": True, "result": 1, "took_ms": 3})
    assert decode_reply(frame).result == 1


# --- pack and unpack ---------------------------------------------------------------------


def test_pack_refuses_datetimes_and_says_what_to_send() -> None:
    import datetime

    with pytest.raises(TypeError, match="ISO 8601"):
        pack({"at": datetime.datetime.now(datetime.UTC)})


def test_pack_keeps_str_and_bytes_apart() -> None:
    assert unpack(pack({"s": "é", "b": b"\xff"})) == {"s": "é", "b": b"\xff"}


def test_unpack_accepts_floats_including_non_finite() -> None:
    value = unpack(pack({"nan": math.nan, "inf": math.inf}))
    assert isinstance(value, dict) and math.isnan(value["nan"]) and value["inf"] == math.inf


def test_unpack_uses_the_limits_it_is_given() -> None:
    tiny = Limits(
        max_frame_bytes=100,
        max_depth=2,
        max_array_len=2,
        max_map_len=2,
        max_str_len=3,
        max_bin_len=3,
    )
    with pytest.raises(DecodeError, match="array of 3 items exceeds limit 2"):
        unpack(pack([1, 2, 3]), tiny)
    with pytest.raises(DecodeError, match="reply nesting exceeds depth 2"):
        unpack(pack([[[1]]]), tiny, what="reply")
    assert unpack(pack([[1]]), tiny) == [[1]]
    assert unpack(pack([[[[1]]]]), REPLY_LIMITS) == [[[[1]]]]


def test_limits_must_be_positive_integers() -> None:
    with pytest.raises(ValueError, match="max_depth must be a positive integer"):
        Limits(
            max_frame_bytes=1,
            max_depth=0,
            max_array_len=1,
            max_map_len=1,
            max_str_len=1,
            max_bin_len=1,
        )


# --- the ROUTER envelope -----------------------------------------------------------------


def test_split_envelope_handles_dealer_and_req_clients() -> None:
    assert split_envelope([b"id", b"body"]) == ([b"id"], [b"body"])
    assert split_envelope([b"id", b"", b"body"]) == ([b"id", b""], [b"body"])
    assert split_envelope([b"id", b"a", b"b", b"c"]) == ([b"id"], [b"a", b"b", b"c"])
    assert split_envelope([b"id", b""]) == ([b"id"], [b""])


# --- fuzzing -----------------------------------------------------------------------------

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["v", "id", "cmd", "args", "x"]) | st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_request_or_a_protocol_error(frame: bytes) -> None:
    try:
        assert isinstance(decode_request([frame]), Request)
    except ProtocolError as error:
        assert error.code in set(ErrorCode) and error.message


@settings(max_examples=300, deadline=None)
@given(wire_values)
def test_any_msgpack_value_decodes_to_a_request_or_a_protocol_error(value: object) -> None:
    frame = msgpack.packb(value)
    for candidate in (frame, frame[:-1], frame + b"\x00"):
        try:
            decode_request([candidate])
        except ProtocolError as error:
            assert error.message


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), wire_values, max_size=5), st.text(max_size=64))
def test_valid_requests_round_trip(args: dict[str, object], request_id: str) -> None:
    frame = encode_request(request_id, "cmd", args)
    try:
        decoded = decode_request([frame])
    except DecodeError as error:  # the only thing generated args can break is the depth
        assert error.message == "request nesting exceeds depth 8"
        return
    assert (decoded.id, decoded.cmd) == (request_id, "cmd")
    assert pack(decoded.args) == pack(args)  # byte equality: NaN != NaN as floats


# --- layering ----------------------------------------------------------------------------


def test_codec_is_the_only_msgpack_user_and_protocol_imports_neither_other_package() -> None:
    for path in sorted(PROTOCOL_DIR.glob("*.py")):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        roots = {name.split(".")[0] for name in imported}
        if path.name != "codec.py":
            assert "msgpack" not in roots, f"{path.name} imports msgpack; only codec.py may"
        for other in ("supervise.workers", "supervise.supervisor"):
            assert not any(name.startswith(other) for name in imported), f"{path.name} imports {other}"
