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
)
from supervise.protocol.codec import (
    decode_request as decode_request,
)
from supervise.protocol.codec import (
    decode_worker_message as decode_worker_message,
)
from supervise.protocol.codec import (
    encode_error as encode_error,
)
from supervise.protocol.codec import (
    encode_reply as encode_reply,
)
from supervise.protocol.codec import (
    encode_request as encode_request,
)
from supervise.protocol.codec import (
    encode_worker_message as encode_worker_message,
)
from supervise.protocol.codec import (
    pack as pack,
)
from supervise.protocol.codec import (
    split_envelope as split_envelope,
)
from supervise.protocol.codec import (
    unpack as unpack,
)
from supervise.protocol.endpoints import (
    Endpoints as Endpoints,
)
from supervise.protocol.endpoints import (
    check_ipc_endpoint as check_ipc_endpoint,
)
from supervise.protocol.endpoints import (
    default_endpoints as default_endpoints,
)
from supervise.protocol.errors import (
    ClientTimeout as ClientTimeout,
)
from supervise.protocol.errors import (
    DecodeError as DecodeError,
)
from supervise.protocol.errors import (
    ErrorCode as ErrorCode,
)
from supervise.protocol.errors import (
    ProtocolError as ProtocolError,
)
from supervise.protocol.errors import (
    RemoteError as RemoteError,
)
from supervise.protocol.errors import (
    SuperviseError as SuperviseError,
)
from supervise.protocol.limits import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
)
from supervise.protocol.limits import (
    REPLY_LIMITS as REPLY_LIMITS,
)
from supervise.protocol.limits import (
    REQUEST_LIMITS as REQUEST_LIMITS,
)
from supervise.protocol.limits import (
    Limits as Limits,
)
from supervise.protocol.messages import (
    SUPERVISOR_KINDS as SUPERVISOR_KINDS,
)
from supervise.protocol.messages import (
    WORKER_KINDS as WORKER_KINDS,
)
from supervise.protocol.messages import (
    Reply as Reply,
)
from supervise.protocol.messages import (
    Request as Request,
)
from supervise.protocol.messages import (
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
