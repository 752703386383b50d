"""The protocol version and the size limits every decoder enforces.

One `Limits` value describes how much a peer may send in one frame. The
supervisor decodes everything that reaches it (control requests, worker
messages) with the tight `REQUEST_LIMITS`; a client decodes replies with the
generous `REPLY_LIMITS`, because a status of thousands of services is large.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PROTOCOL_VERSION = 1
"""The `v` of every message; a peer speaking another version gets a `version` error."""

MAX_REQUEST_ID_CHARS = 64
"""The longest string a request `id` may be (integers are always accepted)."""

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """How large and how deep one decoded frame may be.

    Attributes:
        max_frame_bytes: the whole frame, checked before any decoding.
        max_depth: nested arrays/maps; the top-level map is depth 1.
        max_array_len: items in any one array.
        max_map_len: entries in any one map.
        max_str_len: bytes (UTF-8 encoded) in any one string.
        max_bin_len: bytes in any one binary value.
        max_objects: values in the whole frame (every array item and map entry
            counts), so that the cost of checking a frame is bounded, not only its size:
            a 1 MiB frame of one-byte integers is a million values.
    """

    max_frame_bytes: int
    max_depth: int
    max_array_len: int
    max_map_len: int
    max_str_len: int
    max_bin_len: int
    max_objects: int = 1_000_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive integer, got {value!r}")


REQUEST_LIMITS = Limits(
    max_frame_bytes=1 * _MIB,
    max_depth=8,
    max_array_len=1024,
    max_map_len=256,
    max_str_len=65536,
    max_bin_len=65536,
    max_objects=32_768,
)
"""For everything arriving at the supervisor: control requests and worker messages."""

REPLY_LIMITS = Limits(
    max_frame_bytes=64 * _MIB,
    max_depth=32,
    max_array_len=1_000_000,
    max_map_len=1_000_000,
    max_str_len=64 * _MIB,
    max_bin_len=64 * _MIB,
)
"""For what a client decodes from the supervisor: replies may list thousands of services."""
