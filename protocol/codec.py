"""The bytes of both channels: msgpack in, checked messages out, and back.

This is the only module that imports msgpack. Every decoder turns any failure
into a `DecodeError` whose code and message are the ones in docs/protocol.md,
so a peer can send anything and get a precise error, never a crash.
"""

from __future__ import annotations

import gc
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]  # msgpack ships no stubs

from supervise.protocol.errors import DecodeError, ErrorCode
from supervise.protocol.limits import (
    MAX_REQUEST_ID_CHARS,
    PROTOCOL_VERSION,
    REPLY_LIMITS,
    REQUEST_LIMITS,
    Limits,
)
from supervise.protocol.messages import (
    Reply,
    Request,
    Sender,
    WorkerMessage,
    check_worker_fields,
    wire_type,
)

REQUEST_FIELDS = ("v", "id", "cmd", "args")
"""The fields of a control request, in the order error messages list them."""

_PAUSE_GC_BYTES = 64 * 1024

_ID_RULE = f"a string (≤{MAX_REQUEST_ID_CHARS} chars) or integer"


# --- msgpack -----------------------------------------------------------------------------


def pack(obj: object) -> bytes:
    """Encode one value as a msgpack frame (str as str, bytes as bin).

    Raises:
        TypeError: `obj` holds something msgpack cannot carry, such as a datetime
            (send ISO 8601 strings) or a set (send a list).
        ValueError: `obj` is nested deeper than msgpack's 512 levels.
        OverflowError: an integer does not fit in 64 bits.
    """
    try:
        frame: bytes = msgpack.packb(obj, use_bin_type=True, datetime=False)
    except TypeError as exc:
        raise TypeError(
            f"cannot encode as msgpack: {exc}; send datetimes as ISO 8601 strings and "
            "other objects as maps, arrays, strings, numbers, booleans, nil or bytes"
        ) from exc
    return frame


_FLOAT64 = struct.Struct(">Bd")
_HEADER16 = struct.Struct(">BH")
_HEADER32 = struct.Struct(">BI")
NIL: Final = b"\xc0"
"""msgpack's nil, as `pack(None)` encodes it."""


def pack_float(value: float) -> bytes:
    """`pack(value)` for a float, without msgpack: 0xcb and the IEEE 754 double, big-endian."""
    return _FLOAT64.pack(0xCB, value)


def map_header(entries: int) -> bytes:
    """The bytes that open a msgpack map of `entries` key/value pairs (as `pack` writes it)."""
    if entries < 16:
        return bytes((0x80 | entries,))
    return _HEADER16.pack(0xDE, entries) if entries < 1 << 16 else _HEADER32.pack(0xDF, entries)


def array_header(items: int) -> bytes:
    """The bytes that open a msgpack array of `items` values (as `pack` writes it)."""
    if items < 16:
        return bytes((0x90 | items,))
    return _HEADER16.pack(0xDC, items) if items < 1 << 16 else _HEADER32.pack(0xDD, items)


@dataclass(frozen=True, slots=True)
class Prepacked:
    """A reply's result whose last entry is an array of values encoded beforehand.

    `encode_reply` sends it as `{**head, key: [the decoded items]}` would be sent,
    byte for byte, without encoding the items again: `items` is the concatenation of
    `count` msgpack values (a `status` of thousands of services, each row kept encoded).
    """

    head: Mapping[str, object]
    key: str
    count: int
    items: bytes


def unpack(
    frame: bytes | memoryview, limits: Limits = REQUEST_LIMITS, *, what: str = "request", walk: bool = True
) -> object:
    """Decode one msgpack frame within `limits`.

    Args:
        frame: exactly one msgpack object, with nothing after it.
        limits: the caps to enforce; the frame size is checked before decoding.
        what: what the frame is ("request", "reply", "message"), for error messages.
        walk: check depth and value types node by node (the supervisor always does; a
            client reading its supervisor's replies skips it: msgpack's own limits and
            the extension hook still apply, and the walk costs four times the decode).

    Returns:
        The value, built only from dict (with str keys), list, str, bytes, int,
        float, bool and None.

    Raises:
        DecodeError: TOO_LARGE if the frame or any string, binary, array or map is
            over its limit; MALFORMED for anything else (not msgpack, truncated,
            trailing bytes, invalid UTF-8, non-string map keys, extension types,
            nesting deeper than `limits.max_depth`).
    """
    if not frame:
        raise DecodeError(ErrorCode.MALFORMED, f"{what} is empty; expected one msgpack map")
    if len(frame) > limits.max_frame_bytes:
        raise DecodeError(
            ErrorCode.TOO_LARGE,
            f"{what} of {len(frame)} bytes exceeds limit {limits.max_frame_bytes} bytes",
        )
    # A large frame (a `status` of thousands of services) becomes thousands of containers at
    # once, and the cyclic collector would walk them several times meanwhile to find nothing:
    # msgpack's own advice is to pause it (2 ms of a 9 ms `status` of 2 000 services).
    pause_gc = len(frame) > _PAUSE_GC_BYTES and gc.isenabled()
    if pause_gc:
        gc.disable()
    try:
        obj: object = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            # Not 0: an ext payload then reaches _reject_ext, which can name its type.
            # Type -1 never reaches the hook (msgpack builds a Timestamp first), so
            # _check_tree rejects Timestamps.
            max_ext_len=limits.max_bin_len,
            ext_hook=_reject_ext,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError and subclasses
        raise _explain(exc, frame, limits, what) from exc
    finally:
        if pause_gc:
            gc.enable()
    if walk:
        _check_tree(obj, limits, what)
    return obj


class _ExtRejected(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise _ExtRejected(code)


def _ext_error(code: int | None) -> DecodeError:
    detail = f" (type {code})" if code is not None else ""
    return DecodeError(ErrorCode.MALFORMED, f"msgpack extension types are not accepted{detail}")


_OVER_LIMIT = re.compile(r"(\d+) exceeds max_(\w+)_len\((\d+)\)")
_BAD_KEY = re.compile(r"^(?:<class ')?(\w+)'?>? is not allowed for map key")
_LIMIT_NOUNS = {
    "array": "array of {n} items",
    "map": "map of {n} entries",
    "str": "string of {n} bytes",
    "bin": "binary of {n} bytes",
}
_PY_TO_WIRE = {
    "NoneType": "nil",
    "str": "string",
    "bytes": "binary",
    "list": "array",
    "tuple": "array",
    "dict": "map",
}


def _explain(exc: Exception, frame: bytes | memoryview, limits: Limits, what: str) -> DecodeError:
    """Turn whatever msgpack raised into the documented error."""
    if isinstance(exc, _ExtRejected):
        return _ext_error(exc.code)
    if isinstance(exc, msgpack.ExtraData):
        return DecodeError(
            ErrorCode.MALFORMED,
            f"{what} has {len(exc.extra)} trailing bytes after the msgpack object",
        )
    if isinstance(exc, msgpack.StackError | RecursionError):
        return _too_deep(limits, what)
    if isinstance(exc, msgpack.FormatError):
        return DecodeError(
            ErrorCode.MALFORMED,
            f"{what} is not valid msgpack: it contains byte 0xc1, which msgpack never uses",
        )
    if isinstance(exc, UnicodeDecodeError):
        at = bytes(frame).find(exc.object) if isinstance(exc.object, bytes) else -1
        where = f"at byte {at} " if at >= 0 else ""
        return DecodeError(ErrorCode.MALFORMED, f"string {where}is not valid UTF-8")
    text = str(exc)
    if match := _OVER_LIMIT.search(text):
        n, kind, limit = match.groups()
        if kind == "ext":
            return _ext_error(None)
        noun = _LIMIT_NOUNS.get(kind, kind + " of {n}").format(n=n)
        return DecodeError(ErrorCode.TOO_LARGE, f"{noun} exceeds limit {limit}")
    if match := _BAD_KEY.search(text):
        got = _PY_TO_WIRE.get(match.group(1), match.group(1))
        return DecodeError(ErrorCode.MALFORMED, f"map keys must be strings, got {got}")
    if "incomplete input" in text:
        return DecodeError(
            ErrorCode.MALFORMED,
            f"{what} is not valid msgpack: unexpected end of data at byte {len(frame)}",
        )
    if "timestamp" in text.lower():
        return _ext_error(-1)
    return DecodeError(ErrorCode.MALFORMED, f"{what} is not valid msgpack: {text or type(exc).__name__}")


def _too_deep(limits: Limits, what: str) -> DecodeError:
    return DecodeError(ErrorCode.MALFORMED, f"{what} nesting exceeds depth {limits.max_depth}")


def _check_tree(obj: object, limits: Limits, what: str) -> None:
    """Reject what msgpack lets through: Timestamps, non-str keys, depth over the limit, too many values.

    The values are counted before each container's items are looked at, so the walk
    stops within `limits.max_objects` items whatever the frame holds; the items'
    types are read with `map(type, ...)`, and only containers are visited one by one.
    """
    budget = limits.max_objects
    stack: list[tuple[object, int]] = [(obj, 1)]
    if type(obj) not in _CONTAINERS:
        _check_types({type(obj)}, what)
        return
    while stack:
        value, depth = stack.pop()
        if depth > limits.max_depth:
            raise _too_deep(limits, what)
        budget -= len(value)  # type: ignore[arg-type]
        if budget < 0:
            raise DecodeError(ErrorCode.TOO_LARGE, f"{what} holds more than {limits.max_objects} values")
        if type(value) is dict:
            keys = set(map(type, value))
            if keys - {str}:  # strict_map_key lets bin keys through
                got = wire_type(next(k for k in value if type(k) is not str))
                raise DecodeError(ErrorCode.MALFORMED, f"map keys must be strings, got {got}")
            items: Iterable[object] = value.values()
        else:
            items = value  # type: ignore[assignment]
        types = set(map(type, items))
        _check_types(types, what)
        if types & _CONTAINERS:
            stack.extend((item, depth + 1) for item in items if type(item) in _CONTAINERS)


_CONTAINERS: Final = frozenset({dict, list})


def _check_types(types: set[type], what: str) -> None:
    if msgpack.Timestamp in types:
        raise _ext_error(-1)


# --- the ROUTER envelope -----------------------------------------------------------------


_F = TypeVar("_F", bytes, memoryview, bytes | memoryview)  # a frame as received: copied, or a view of it


def split_envelope(frames: Sequence[_F]) -> tuple[list[_F], list[_F]]:
    """Split what a ROUTER received into the envelope to reply with, and the body.

    A DEALER client's message arrives as `[identity, body]`; a REQ client's as
    `[identity, b"", body]`. The envelope is the identity plus the empty
    delimiter if there is one (an empty frame followed by more frames), so that
    `envelope + [reply]` reaches either kind of client.

    Returns:
        `(envelope, body_frames)`; pass `body_frames` to `decode_request`.
    """
    if len(frames) >= 3 and frames[1] == b"":
        return list(frames[:2]), list(frames[2:])
    return list(frames[:1]), list(frames[1:])


# --- control channel ---------------------------------------------------------------------


def encode_request(request_id: str | int, cmd: str, args: Mapping[str, object] | None = None) -> bytes:
    """Encode a control request `{v, id, cmd, args}`.

    Raises:
        ValueError: `request_id` is not a string of at most 64 characters or an int.
        TypeError: an argument cannot be encoded (see `pack`).
    """
    if not _is_valid_id(request_id):
        raise ValueError(f"request id must be {_ID_RULE}, got {_show(request_id)}")
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": dict(args or {})})


def decode_request(frames: Sequence[bytes | memoryview]) -> Request:
    """Decode and check a control request: the body frames after the ROUTER envelope.

    Checks the envelope only; whether `cmd` exists and its `args` fit is the
    dispatcher's business. Whenever the request's `id` could be read, it is in
    the error's `request_id`, so the error reply can echo it.

    Raises:
        DecodeError: MALFORMED or TOO_LARGE (see `unpack`; also not exactly one
            frame, or not a map), VERSION (missing or unsupported `v`),
            BAD_REQUEST (bad `id`, `cmd` or `args`, or an unknown field).
    """
    if len(frames) != 1:
        raise DecodeError(ErrorCode.MALFORMED, f"expected exactly 1 frame, got {len(frames)}")
    obj = unpack(frames[0], REQUEST_LIMITS, what="request")
    if not isinstance(obj, dict):
        raise DecodeError(ErrorCode.MALFORMED, f"request must be a map, got {wire_type(obj)}")
    raw_id = obj.get("id")
    rid = raw_id if _is_valid_id(raw_id) else None
    _check_version(obj, "request", "this server", request_id=rid)
    for name in obj:
        if name not in REQUEST_FIELDS:
            allowed = ", ".join(REQUEST_FIELDS)
            raise DecodeError(ErrorCode.BAD_REQUEST, f'unknown field "{name}"; allowed: {allowed}', rid)
    if rid is None:
        got = _describe(raw_id) if "id" in obj else "nothing (the reply echoes it)"
        raise DecodeError(ErrorCode.BAD_REQUEST, f'field "id" must be {_ID_RULE}, got {got}')
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        got = f", got {wire_type(cmd)}" if "cmd" in obj else ""
        raise DecodeError(ErrorCode.BAD_REQUEST, f'field "cmd" is required and must be a string{got}', rid)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise DecodeError(
            ErrorCode.BAD_REQUEST,
            f'field "args" must be a map of argument names to values, got {wire_type(args)} '
            "(omit it or send {} for no arguments)",
            rid,
        )
    return Request(id=rid, cmd=cmd, args=args)


def encode_reply(request_id: str | int | None, result: object) -> bytes:
    """Encode a successful reply `{v, id, ok: true, result}`; `result` may be `Prepacked`.

    Raises:
        TypeError: `result` cannot be encoded (see `pack`).
    """
    if isinstance(result, Prepacked):
        if result.key in result.head:
            raise ValueError(f'Prepacked: "{result.key}" is both in the head and the prepacked key')
        # The result is the reply's last value and its array the result's last: the reply with an
        # empty array there ends with that array's one byte, which the real array replaces.
        empty = pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": {**result.head, result.key: []}})
        return b"".join((empty[:-1], array_header(result.count), result.items))
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: str | int | None, code: ErrorCode | str, message: str) -> bytes:
    """Encode a failed reply `{v, id, ok: false, error: {code, message}}`."""
    error = {"code": str(code), "message": message}
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error})


def decode_reply(frame: bytes) -> Reply:
    """Decode a reply from the supervisor, within the generous `REPLY_LIMITS`.

    Unknown fields are ignored, so that a server may add some without breaking
    older clients.

    Raises:
        DecodeError: the frame is not a reply of this protocol version.
    """
    obj = unpack(frame, REPLY_LIMITS, what="reply", walk=False)
    if not isinstance(obj, dict):
        raise DecodeError(ErrorCode.MALFORMED, f"reply must be a map, got {wire_type(obj)}")

    _check_version(obj, "reply", "this client")
    rid = obj.get("id")
    if rid is not None and not _is_valid_id(rid):
        raise DecodeError(
            ErrorCode.MALFORMED,
            f'reply field "id" must be {_ID_RULE} or nil, got {_describe(rid)}',
        )
    ok = obj.get("ok")
    if type(ok) is not bool:
        raise DecodeError(ErrorCode.MALFORMED, f'reply field "ok" must be a bool, got {wire_type(ok)}')
    if ok:
        return Reply(id=rid, ok=True, result=obj.get("result"), error_code=None, error_message=None)
    error = obj.get("error")
    if not (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
        raise DecodeError(
            ErrorCode.MALFORMED,
            f'reply field "error" must be a map with string "code" and "message", got {_describe(error)}',
        )
    return Reply(id=rid, ok=False, result=None, error_code=error["code"], error_message=error["message"])


# --- worker channel ----------------------------------------------------------------------


def encode_worker_message(kind: str, /, **fields: object) -> bytes:
    """Encode a worker-channel message `{v, k: kind, **fields}`.

    The fields are checked against the kind's table (messages.py) first, and
    nullable fields left out are sent as nil.

    Raises:
        ValueError: unknown kind, or a missing, unknown or mistyped field.
        TypeError: a value cannot be encoded (see `pack`).
    """
    try:
        checked = check_worker_fields(kind, fields)
    except DecodeError as exc:
        raise ValueError(f"cannot encode worker message: {exc.message}") from None
    return pack({"v": PROTOCOL_VERSION, "k": kind, **checked})


def decode_worker_message(frame: bytes, *, sender: Sender | None = None) -> WorkerMessage:
    """Decode and check one worker-channel frame, within `REQUEST_LIMITS`.

    Args:
        frame: the body frame (after the ROUTER's identity frame, if any).
        sender: "worker" when the supervisor decodes (so every message must be a
            worker kind and carry a token), "supervisor" when a worker decodes;
            None accepts both directions, telling the two `heartbeat` kinds apart
            by whether a `token` is present.

    Raises:
        DecodeError: MALFORMED or TOO_LARGE (see `unpack`), VERSION, or
            BAD_REQUEST for an unknown kind or a missing, unknown or mistyped field.
    """
    obj = unpack(frame, REQUEST_LIMITS, what="message")
    if not isinstance(obj, dict):
        raise DecodeError(ErrorCode.MALFORMED, f"message must be a map, got {wire_type(obj)}")

    _check_version(obj, "message", "this peer")
    kind = obj.get("k")
    if not isinstance(kind, str):
        got = f", got {wire_type(kind)}" if "k" in obj else ""
        raise DecodeError(
            ErrorCode.BAD_REQUEST,
            f'field "k" (the message kind) is required and must be a string{got}',
        )
    fields = {name: value for name, value in obj.items() if name not in ("v", "k")}
    return WorkerMessage(kind=kind, fields=check_worker_fields(kind, fields, sender))


# --- helpers -----------------------------------------------------------------------------


def _check_version(obj: dict[str, object], what: str, speaker: str, request_id: str | int | None = None) -> None:
    if "v" not in obj:
        raise DecodeError(
            ErrorCode.VERSION,
            f'{what} has no protocol version "v"; {speaker} speaks {PROTOCOL_VERSION}',
            request_id,
        )
    v = obj["v"]
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise DecodeError(
            ErrorCode.VERSION,
            f"unsupported protocol version {_show(v)}; {speaker} speaks {PROTOCOL_VERSION}",
            request_id,
        )


def _is_valid_id(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_CHARS
    return type(value) is int


def _show(value: object) -> str:
    """A short rendering of a wire value for error messages."""
    if isinstance(value, str):
        return f'"{value[:40]}..."' if len(value) > 40 else f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int | float):
        return repr(value)
    return wire_type(value)


def _describe(value: object) -> str:
    """What kind of value a field held, for "must be X, got Y" messages."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return wire_type(value)
