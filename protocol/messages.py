"""The decoded messages of both channels, and the field tables of the worker channel.

Control channel: a client's `Request`, the supervisor's `Reply`. Worker channel:
a `WorkerMessage` of one kind, whose fields are checked against the tables
below. Pure data and pure checks: no bytes (that is codec.py), no sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from supervise.protocol.errors import DecodeError, ErrorCode, RemoteError


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded control request: run command `cmd` with `args`; the reply echoes `id`."""

    id: str | int
    cmd: str
    args: dict[str, object]


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded control reply: `result` when `ok`, else `error_code` and `error_message`."""

    id: str | int | None
    ok: bool
    result: object
    error_code: str | None
    error_message: str | None

    def unwrap(self) -> object:
        """Return the result of a successful reply.

        Raises:
            RemoteError: the reply is an error; it carries the server's code and message.
        """
        if self.ok:
            return self.result
        raise RemoteError(self.error_code or ErrorCode.INTERNAL, self.error_message or "")


@dataclass(frozen=True, slots=True)
class WorkerMessage:
    """A decoded worker-channel message: its kind and its fields (without `v` and `k`).

    After decoding, `fields` holds every field of the kind; nullable fields the
    sender left out are present with the value None.
    """

    kind: str
    fields: dict[str, object]


class FieldType(StrEnum):
    """The type a worker-message field must have on the wire (the value is its doc name)."""

    STR = "str"
    INT = "int"
    BOOL = "bool"
    MAP = "map"
    NUMBER_MAP = "map of str to number"
    OPT_STR = "str or nil"
    OPT_NUMBER = "number or nil"
    ANY = "any"

    @property
    def nullable(self) -> bool:
        """Whether nil is allowed, and so whether the field may be left out."""
        return self in _NULLABLE

    def accepts(self, value: object) -> bool:
        """Whether `value` (as decoded from msgpack) has this type. bool is not a number."""
        return _ACCEPTS[self](value)


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


_NULLABLE: Final = frozenset({FieldType.OPT_STR, FieldType.OPT_NUMBER, FieldType.ANY})
_ACCEPTS: Final[Mapping[FieldType, Callable[[object], bool]]] = {
    FieldType.STR: lambda value: isinstance(value, str),
    FieldType.INT: lambda value: type(value) is int,
    FieldType.BOOL: lambda value: type(value) is bool,
    FieldType.MAP: lambda value: isinstance(value, dict),
    FieldType.NUMBER_MAP: lambda value: (
        isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    ),
    FieldType.OPT_STR: lambda value: value is None or isinstance(value, str),
    FieldType.OPT_NUMBER: lambda value: value is None or _is_number(value),
    FieldType.ANY: lambda value: True,
}
"""Each type's check, looked up once per field (two or three messages per run cross the channel)."""


WORKER_FIELDS: Mapping[str, Mapping[str, FieldType]] = {
    "hello": {"token": FieldType.STR, "pid": FieldType.INT},
    "heartbeat": {"token": FieldType.STR},
    "watchdog": {"token": FieldType.STR},
    "error": {"token": FieldType.STR, "message": FieldType.STR, "traceback": FieldType.STR},
    "run_started": {"token": FieldType.STR, "run_id": FieldType.STR, "at": FieldType.OPT_NUMBER},
    "run_progress": {
        "token": FieldType.STR,
        "run_id": FieldType.STR,
        "progress": FieldType.OPT_NUMBER,
        "message": FieldType.OPT_STR,
    },
    "run_finished": {
        "token": FieldType.STR,
        "run_id": FieldType.STR,
        "ok": FieldType.BOOL,
        "result": FieldType.ANY,
        "error": FieldType.OPT_STR,
        "traceback": FieldType.OPT_STR,
        "at": FieldType.OPT_NUMBER,
    },
    "run_lease_expired": {"token": FieldType.STR, "run_id": FieldType.STR, "at": FieldType.OPT_NUMBER},
    "metrics": {
        "token": FieldType.STR,
        "counters": FieldType.NUMBER_MAP,
        "gauges": FieldType.NUMBER_MAP,
    },
    "log": {"token": FieldType.STR, "level": FieldType.STR, "message": FieldType.STR},
}
"""Worker -> supervisor: kind -> field -> type. Every kind carries the per-spawn `token`."""

SUPERVISOR_FIELDS: Mapping[str, Mapping[str, FieldType]] = {
    "heartbeat": {},
    "stop": {},
    "pause": {},
    "resume": {},
    "run": {
        "run_id": FieldType.STR,
        "args": FieldType.MAP,
        "nominal_time": FieldType.OPT_STR,
        "attempt": FieldType.INT,
        "key": FieldType.OPT_STR,
        "not_before": FieldType.OPT_NUMBER,
        "epoch": FieldType.OPT_NUMBER,  # cluster mode: the run's fencing token (docs/cluster.md)
        "lease_until": FieldType.OPT_NUMBER,  # cluster mode: CLOCK_MONOTONIC time the run's lease is trusted to
        "lease_grace_ms": FieldType.OPT_NUMBER,  # cluster mode: past lease_until, how long a cancel may take
    },
    "cancel": {"run_id": FieldType.STR},
    "lease": {"runs": FieldType.NUMBER_MAP},  # cluster mode: run id -> its renewed lease_until
}
"""Supervisor -> worker: kind -> field -> type. No token: the worker has one supervisor."""

WORKER_KINDS: frozenset[str] = frozenset(WORKER_FIELDS)
"""Kinds a worker sends to the supervisor."""

SUPERVISOR_KINDS: frozenset[str] = frozenset(SUPERVISOR_FIELDS)
"""Kinds the supervisor sends to a worker."""

Sender = Literal["worker", "supervisor"]
"""Which side of the worker channel sent a message."""


def worker_fields_for(kind: str, fields: Mapping[str, object], sender: Sender | None) -> Mapping[str, FieldType]:
    """The field table a message of `kind` must match.

    Args:
        kind: the message's `k`.
        fields: its other fields; used only to tell the two `heartbeat`s apart
            when `sender` is None (one carrying a `token` is a worker's).
        sender: who sent it, if the caller knows; None accepts either direction.

    Raises:
        DecodeError: BAD_REQUEST if no such kind is sent by `sender`.
    """
    tables = {"worker": WORKER_FIELDS, "supervisor": SUPERVISOR_FIELDS}
    if sender is not None:
        table = tables[sender].get(kind)
        if table is None:
            allowed = ", ".join(sorted(tables[sender]))
            raise DecodeError(ErrorCode.BAD_REQUEST, f'unknown {sender} message kind "{kind}"; allowed: {allowed}')
        return table
    if kind in WORKER_FIELDS and (kind not in SUPERVISOR_FIELDS or "token" in fields):
        return WORKER_FIELDS[kind]
    if kind in SUPERVISOR_FIELDS:
        return SUPERVISOR_FIELDS[kind]
    raise DecodeError(ErrorCode.BAD_REQUEST, f'unknown worker message kind "{kind}"')


def check_worker_fields(kind: str, fields: Mapping[str, object], sender: Sender | None = None) -> dict[str, object]:
    """Check a worker-channel message's fields against its kind's table.

    Args:
        kind: the message's `k`.
        fields: every field except `v` and `k`.
        sender: "worker" or "supervisor" to accept only that side's kinds;
            None accepts both (see `worker_fields_for`).

    Returns:
        The fields, with every nullable field the sender left out set to None.

    Raises:
        DecodeError: BAD_REQUEST naming the unknown kind, or the first missing,
            unknown or mistyped field.
    """
    table = worker_fields_for(kind, fields, sender)
    for name in fields:
        if name not in table:
            allowed = ", ".join(table) or "none"
            raise DecodeError(ErrorCode.BAD_REQUEST, f'{kind}: unknown field "{name}"; allowed: {allowed}')
    checked: dict[str, object] = {}
    for name, ftype, accepts, nullable in _compiled(table):
        if name not in fields:
            if not nullable:
                raise DecodeError(ErrorCode.BAD_REQUEST, f'{kind}: missing field "{name}" ({ftype})')
            checked[name] = None
            continue
        value = fields[name]
        if not accepts(value):
            raise DecodeError(
                ErrorCode.BAD_REQUEST,
                f'{kind}: field "{name}" must be {ftype}, got {wire_type(value)}',
            )
        checked[name] = value
    return checked


_Spec = tuple[tuple[str, FieldType, Callable[[object], bool], bool], ...]
_COMPILED: dict[int, tuple[Mapping[str, FieldType], _Spec]] = {}


def _compiled(table: Mapping[str, FieldType]) -> _Spec:
    """A field table as (name, type, its check, nullable) rows, made once per table."""
    hit = _COMPILED.get(id(table))
    if hit is not None and hit[0] is table:
        return hit[1]
    spec = tuple((name, ftype, _ACCEPTS[ftype], ftype in _NULLABLE) for name, ftype in table.items())
    if len(_COMPILED) < 64:  # the module's own tables; a caller's ad-hoc table is compiled each time
        _COMPILED[id(table)] = (table, spec)
    return spec


def wire_type(value: object) -> str:
    """The msgpack name of a decoded value's type, for error messages ("map", "nil" ...)."""
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list | tuple):
        return "array"
    return _WIRE_NAMES.get(type(value).__name__, type(value).__name__)


_WIRE_NAMES = {
    "NoneType": "nil",
    "bool": "bool",
    "int": "int",
    "float": "float",
    "str": "string",
    "bytes": "binary",
    "bytearray": "binary",
    "ExtType": "extension",
    "Timestamp": "timestamp",
}
