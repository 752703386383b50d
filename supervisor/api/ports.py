"""What the HTTP API needs from the daemon: the control port, plus the run history and the events ring."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from supervise.supervisor.daemon.ports import ControlApi

if TYPE_CHECKING:
    from supervise.supervisor.daemon.cluster import ClusterAgent
    from supervise.supervisor.store.queued import QueuedStore


class EventRing(Protocol):
    """The events ring of observability: numbered events, replayable, with listeners."""

    seq: int
    instance: str
    listeners: list[Callable[[str, str, Mapping[str, object]], None]]

    def since(self, seq: int, *, service: str | None = None, limit: int = 1000) -> dict[str, Any]: ...


class ApiHost(ControlApi, Protocol):
    """The daemon as the API sees it: every control command, and the store for paging."""

    @property
    def store(self) -> QueuedStore | None: ...

    @property
    def cluster(self) -> ClusterAgent | None:
        """The node's cluster agent with `[cluster]` (docs/cluster.md); None otherwise."""
        ...
