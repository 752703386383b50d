"""`supervise cluster status`: the nodes of a cluster, read from its PostgreSQL store (docs/cluster.md).

It reads the database named by the config's `[cluster] store`, not a daemon, so
it works from any machine that can reach the database, and while nodes are down.
"""

from __future__ import annotations

from typing import Any

import click

from supervise.supervisor.cli.base import DEFAULT_CONFIG, CliError, Exit, _print, cli, json_option


@cli.group()
def cluster() -> None:
    """Cluster mode: nodes, leases and the maintenance leader."""


@cluster.command()
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@json_option
def status(config: str, as_json: bool) -> None:
    """Nodes (heartbeat age, runs and singleton copies held), placements and the leader."""
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError
    from supervise.supervisor.store import StoreError, open_store
    from supervise.supervisor.store.cluster import ClusterStore
    from supervise.supervisor.store.postgres import PostgresStore

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None
    if cfg.cluster is None:
        raise CliError(f"{config} has no [cluster] table; cluster status needs one (docs/cluster.md)")
    try:
        store = open_store(cfg.cluster.store)
        assert isinstance(store, PostgresStore)
        reader = ClusterStore(store.dsn, schema=store.schema, node="status", lease_ttl_ms=cfg.cluster.lease_ttl_ms)
        try:
            result = reader.open().status()
        finally:
            reader.close()
            store.close()
    except StoreError as e:
        raise CliError(f"cannot read the cluster store: {e}", Exit.UNREACHABLE) from None
    _print(result, as_json, _render)


def _render(result: dict[str, Any]) -> list[str]:
    leader = result["leader"]
    lines = [f"leader: {leader['node']} (epoch {leader['epoch']})" if leader else "leader: none (no live leader lease)"]
    lines.append(f"{'NODE':<32} {'STATE':<8} {'HEARTBEAT':>10} {'RUNS':>6}  SERVICES")
    for node in result["nodes"]:
        age = f"{node['heartbeat_age_s']:.1f}s ago"
        services = ", ".join(node["services"]) or "-"
        lines.append(f"{node['name']:<32} {node['state']:<8} {age:>10} {node['runs']:>6}  {services}")
    if result["placements"]:
        lines.append("placements:")
        for p in result["placements"]:
            state = f"held by {p['holder']}" if p["live"] else f"free (last {p['holder']})"
            lines.append(f"  {p['name']}#{p['slot']}: {state}, epoch {p['epoch']}")
    return lines
