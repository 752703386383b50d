"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.api_helpers import Receiver, start_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A plain HTTP server on 127.0.0.1 that records what tasks send it, closed after the test."""
    found = start_receiver()
    try:
        yield found
    finally:
        found.close()
