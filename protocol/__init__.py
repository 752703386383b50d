"""supervise.protocol: the wire contract shared by the supervisor, its workers and clients.

Message types, the msgpack codec, limits, endpoints, errors and the control
clients. See docs/protocol.md for the contract itself. `Client` and
`AsyncClient` are imported on first use, so that code which only encodes and
decodes (a worker, say) does not load ZeroMQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervise.protocol.codec import (
    decode_reply as decode_reply,
    decode_request as decode_request,
    decode_worker_message as decode_worker_message,
    encode_error as encode_error,
    encode_reply as encode_reply,
    encode_request as encode_request,
    encode_worker_message as encode_worker_message,
    pack as pack,
    split_envelope as split_envelope,
    unpack as unpack,
)
from supervise.protocol.endpoints import (
    Endpoints as Endpoints,
    check_ipc_endpoint as check_ipc_endpoint,
    default_endpoints as default_endpoints,
)
from supervise.protocol.errors import (
    ClientTimeout as ClientTimeout,
    DecodeError as DecodeError,
    ErrorCode as ErrorCode,
    ProtocolError as ProtocolError,
    RemoteError as RemoteError,
    SuperviseError as SuperviseError,
)
from supervise.protocol.limits import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    REPLY_LIMITS as REPLY_LIMITS,
    REQUEST_LIMITS as REQUEST_LIMITS,
    Limits as Limits,
)
from supervise.protocol.messages import (
    SUPERVISOR_KINDS as SUPERVISOR_KINDS,
    WORKER_KINDS as WORKER_KINDS,
    Reply as Reply,
    Request as Request,
    WorkerMessage as WorkerMessage,
)

if TYPE_CHECKING:
    from supervise.protocol.client import AsyncClient as AsyncClient
    from supervise.protocol.client import Client as Client

__all__ = [
    "PROTOCOL_VERSION",
    "REPLY_LIMITS",
    "REQUEST_LIMITS",
    "SUPERVISOR_KINDS",
    "WORKER_KINDS",
    "AsyncClient",
    "Client",
    "ClientTimeout",
    "DecodeError",
    "Endpoints",
    "ErrorCode",
    "Limits",
    "ProtocolError",
    "RemoteError",
    "Reply",
    "Request",
    "SuperviseError",
    "WorkerMessage",
    "check_ipc_endpoint",
    "decode_reply",
    "decode_request",
    "decode_worker_message",
    "default_endpoints",
    "encode_error",
    "encode_reply",
    "encode_request",
    "encode_worker_message",
    "pack",
    "split_envelope",
    "unpack",
]

_LAZY = frozenset({"Client", "AsyncClient"})


def __getattr__(name: str) -> object:
    # Client and AsyncClient import zmq; load them only when asked for.
    if name in _LAZY:
        from supervise.protocol import client

        value: object = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
