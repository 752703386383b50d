"""`GET /api/v1/cluster`: the nodes of the cluster this daemon is in (docs/cluster.md).

The answer is `ClusterStore.status()`, the same read as `supervise cluster status
--json`, run in a thread on a connection of its own (opened at the first call),
so a slow or frequent reader never delays the node's heartbeats. Nodes belong to
the daemon, not to a tenant: a tenant's token gets 404, as for anything outside
its tenant.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from supervise.supervisor.api.models import ClusterLeader, ClusterNode, ClusterPlacement, ClusterView
from supervise.supervisor.api.ports import ApiHost
from supervise.supervisor.api.server import ApiError, Call, Reply, Route, not_found
from supervise.supervisor.api.store import Role
from supervise.supervisor.store.base import StoreError

if TYPE_CHECKING:
    from supervise.supervisor.store.cluster import ClusterStore


class ClusterResource:
    """The cluster endpoint; `routes()` joins the API's table."""

    def __init__(self, host: ApiHost) -> None:
        self.host = host
        self._reader: ClusterStore | None = None

    def close(self) -> None:
        """Close the reader's connection (the HTTP server is going away)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def get_cluster(self, call: Call) -> Reply:
        if call.tenant is not None:
            raise not_found("cluster for a tenant's token")
        agent = self.host.cluster
        if agent is None:
            return Reply({"enabled": False})  # nothing else: there is no node, leader or placement
        if self._reader is None:
            # Imported here: PostgreSQL's driver is loaded only in cluster mode.
            from supervise.supervisor.store.cluster import ClusterStore

            own = agent.store
            self._reader = ClusterStore(
                own.dsn, schema=own.schema, node=own.node, lease_ttl_ms=agent.config.lease_ttl_ms
            )
        try:
            status: dict[str, Any] = await asyncio.to_thread(self._reader.status)
        except StoreError as e:
            raise ApiError(503, "Service Unavailable", f"cannot read the cluster store: {e}") from None
        nodes = [
            ClusterNode(
                name=n["name"],
                host=n["host"],
                pid=n["pid"],
                state=n["state"],
                alive=n["state"] == "live",
                started_at=n["started_at"],
                heartbeat_age_s=n["heartbeat_age_s"],
                runs_held=n["runs"],
                singletons_held=n["services"],
            )
            for n in status["nodes"]
        ]
        leader = status["leader"]
        return Reply(
            ClusterView(
                enabled=True,
                node=agent.config.node,
                leader=None if leader is None else ClusterLeader(**leader),
                database_time=status["database_time"],
                nodes=nodes,
                placements=[ClusterPlacement(**p) for p in status["placements"]],
            )
        )

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/cluster",
                self.get_cluster,
                Role.VIEWER,
                "Cluster mode: this node, the leader, the nodes and what each holds, the placements",
                "cluster",
                response=ClusterView,
                errors=(404, 503),
            ),
        ]
