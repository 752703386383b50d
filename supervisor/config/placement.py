"""Checks across `[cluster]` and the services' `placement` keys (docs/cluster.md)."""

from __future__ import annotations

from collections.abc import Mapping

from supervise.supervisor.config.cluster import ClusterConfig, KeyPath
from supervise.supervisor.config.model import ServiceConfig

__all__ = ["placement_problems"]


def placement_problems(
    services: Mapping[str, ServiceConfig], cluster: ClusterConfig | None, store: str | None
) -> list[tuple[KeyPath, str]]:
    """Checks across tables: a placement needs `[cluster]`, and applies to long-running services;
    `[supervisor] store`, when given beside `[cluster]`, must be the cluster's store."""
    issues: list[tuple[KeyPath, str]] = []
    if cluster is not None and store is not None and store != cluster.store:
        issues.append(
            (
                ("supervisor", "store"),
                "differs from cluster.store; in cluster mode the run history is the cluster's "
                "store (remove supervisor.store)",
            )
        )
    for name, service in services.items():
        if service.placement == "every":
            continue
        if cluster is None:
            issues.append(
                (("services", name, "placement"), f'"{service.placement}" needs a [cluster] table (docs/cluster.md)')
            )
        elif service.schedule is not None:
            issues.append(
                (
                    ("services", name, "placement"),
                    "applies to long-running services; a scheduled service's runs are spread over the cluster "
                    "by their leases already",
                )
            )
    return issues
