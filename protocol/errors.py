"""The error hierarchy shared by every layer, and the wire error codes.

`SuperviseError` is the root; it lives here, in the lowest layer, so that the
worker runtime and the supervisor raise subclasses of the same thing.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The `error.code` strings of a failed control reply (docs/protocol.md)."""

    MALFORMED = "malformed"  # not msgpack, not a map, bad UTF-8, ext types, too deep
    TOO_LARGE = "too_large"  # a frame, string, array or map over its limit
    VERSION = "version"  # missing or unsupported "v"
    BAD_REQUEST = "bad_request"  # envelope fields missing, unknown or of the wrong type
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGS = "bad_args"  # a command's arguments are unknown, missing or mistyped
    NOT_FOUND = "not_found"  # no such service
    CONFLICT = "conflict"  # the service's state does not allow the command now
    RATE_LIMITED = "rate_limited"  # too many requests from one client; slow down
    FORBIDDEN = "forbidden"  # the client's key or role may not run this command
    INTERNAL = "internal"  # a bug in the supervisor; the traceback is in its log


class SuperviseError(Exception):
    """Root of every error raised by supervise."""


class ProtocolError(SuperviseError):
    """A message broke the wire contract; carries the code sent back to the peer."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | int | None = None) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(f"{code}: {message}")


class DecodeError(ProtocolError):
    """Bytes that are not a valid message (malformed or over a limit)."""


class RemoteError(SuperviseError):
    """The supervisor answered a request with `ok: false`.

    `code` is normally an `ErrorCode` value; it stays a plain string so that a
    client keeps working when a newer server sends a code it does not know.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class ClientTimeout(SuperviseError, TimeoutError):
    """No reply arrived within the client's deadline (on every attempt, if retried)."""

    def __init__(self, endpoint: str, timeout_s: float, attempts: int = 1) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.attempts = attempts
        tries = f" (tried {attempts} times)" if attempts > 1 else ""
        super().__init__(
            f"no reply from supervisor at {endpoint} within {timeout_s:g} s{tries}; "
            "is it running? Start it with 'supervise start CONFIG'"
        )
