"""The `[cluster]` table and the `placement` service key (docs/cluster.md).

    [cluster]
    store = "postgresql://supervise@db/supervise"   # the one coordination service
    node = "web-1"          # default: host name + a suffix unique per start
    lease_ttl = "15s"       # a lease not renewed for this long is gone
    renew_every = "5s"      # heartbeats and lease renewals; well below lease_ttl

A node's leases (its runs, its singleton placements, the maintenance leadership)
live for `lease_ttl` after each renewal on the database clock. `renew_every` must
leave room for two missed renewals: at most a third of `lease_ttl`.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from supervise.supervisor.core.units import parse_duration_ms, show_value, type_name

__all__ = [
    "CLUSTER_KEYS",
    "ClusterConfig",
    "parse_cluster",
    "parse_placement",
    "placement_copies",
]

KeyPath = tuple[str, ...]
CLUSTER_KEYS: Final = ("store", "node", "lease_ttl", "renew_every")
NODE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MIN_LEASE_TTL_MS: Final = 1_000
FENCE_MARGIN_FRACTION: Final = 0.2  # a holder stops its singleton this much of lease_ttl before the lease ends
MIN_FENCE_MARGIN_MS: Final = 300


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The `[cluster]` table, validated."""

    store: str  # postgresql://… (the run store of every node too)
    node: str  # this node's name, unique among live nodes
    node_explicit: bool = False  # named in the config (a clash refuses to start) or generated
    lease_ttl_ms: int = 15_000
    renew_every_ms: int = 5_000

    @property
    def fence_margin_ms(self) -> int:
        """How long before its lease ends a holder that could not renew kills its singleton."""
        return max(MIN_FENCE_MARGIN_MS, int(self.lease_ttl_ms * FENCE_MARGIN_FRACTION))


def default_node_name() -> str:
    """The host name and a suffix unique per start (pid and random), e.g. `web-7f3a-41c2`."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid():x}-{os.urandom(2).hex()}"


def parse_cluster(table: object, issues: list[tuple[KeyPath, str]]) -> ClusterConfig | None:
    """Validate `[cluster]`; problems go to `issues` with their dotted key."""
    path: KeyPath = ("cluster",)
    if not isinstance(table, Mapping):
        issues.append((path, f"expected a table, got {type_name(table)}"))
        return None
    before = len(issues)
    for key in table:
        if key not in CLUSTER_KEYS:
            issues.append(((*path, str(key)), f"unknown key; the keys of [cluster] are {', '.join(CLUSTER_KEYS)}"))
    store = table.get("store")
    if store is None:
        issues.append(((*path, "store"), 'is required: the PostgreSQL every node shares ("postgresql://user@host/db")'))
    elif not isinstance(store, str) or not store.startswith(("postgresql://", "postgres://")):
        issues.append(((*path, "store"), f"expected a postgresql:// URL, got {show_value(store)}"))
    node = table.get("node")
    if node is not None and (not isinstance(node, str) or not NODE_NAME.fullmatch(node)):
        issues.append(((*path, "node"), f"expected a name matching {NODE_NAME.pattern}, got {show_value(node)}"))
    durations: dict[str, int] = {}
    for key, default in (("lease_ttl", 15_000), ("renew_every", 5_000)):
        try:
            durations[key] = parse_duration_ms(table[key]) if key in table else default
        except ValueError as e:
            issues.append(((*path, key), str(e)))
    ttl, every = durations.get("lease_ttl"), durations.get("renew_every")
    if ttl is not None and ttl < MIN_LEASE_TTL_MS:
        issues.append(((*path, "lease_ttl"), f"must be at least 1s, got {show_value(table.get('lease_ttl'))}"))
    elif ttl is not None and every is not None and (every <= 0 or every * 3 > ttl):
        issues.append(
            (
                (*path, "renew_every"),
                f"must be > 0 and at most a third of lease_ttl ({ttl} ms), so that a lease survives a missed "
                f"renewal; got {every} ms (lower renew_every or raise lease_ttl)",
            )
        )
    if len(issues) > before:
        return None
    assert isinstance(store, str) and ttl is not None and every is not None
    return ClusterConfig(
        store=store,
        node=node if isinstance(node, str) else default_node_name(),
        node_explicit=node is not None,
        lease_ttl_ms=ttl,
        renew_every_ms=every,
    )


def parse_placement(value: object) -> str:
    """The `placement` service key: "every" (each node runs a copy), "one", or "any:N"."""
    if value in ("every", "one"):
        return str(value)
    if isinstance(value, str) and (m := re.fullmatch(r"any:(\d{1,3})", value)) and 1 <= int(m[1]) <= 100:
        return value
    raise ValueError(f'expected "every", "one" or "any:N" (N from 1 to 100), got {show_value(value)}')


def placement_copies(placement: str) -> int | None:
    """How many copies run in the cluster: None for "every" (one per node)."""
    if placement == "every":
        return None
    if placement == "one":
        return 1
    return int(placement.partition(":")[2])
