"""Page cursors of the API's lists (runs, tasks): an opaque token for "older than this time"."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from supervise.supervisor.api.server import ApiError


def encode_cursor(created_at: datetime) -> str:
    """The cursor of the page after the item created at `created_at`."""
    return base64.urlsafe_b64encode(created_at.astimezone(UTC).isoformat().encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> datetime:
    """The time a cursor from `encode_cursor` stands for.

    Raises:
        ApiError: 422 when it is not such a cursor.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when = datetime.fromisoformat(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            422,
            "Invalid request",
            "query:/cursor: not a cursor this API returned",
            errors=[{"pointer": "query:/cursor", "detail": "not a cursor this API returned"}],
        ) from None
    if when.utcoffset() is None:
        raise ApiError(422, "Invalid request", "query:/cursor: not a cursor this API returned")
    return when
