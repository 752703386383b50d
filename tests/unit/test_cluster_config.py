"""`[cluster]` and `placement`: defaults, and a clear error naming the key for bad input."""

from __future__ import annotations

import pytest

from supervise.supervisor.config.cluster import placement_copies
from supervise.supervisor.config.loader import parse_config
from supervise.supervisor.core.errors import ConfigError

STORE = "postgresql://supervise@db/supervise"


def cluster(**keys: object) -> dict[str, object]:
    return {"cluster": {"store": STORE, **keys}}


def test_defaults_and_a_generated_node_name_unique_per_start() -> None:
    a = parse_config(cluster()).cluster
    b = parse_config(cluster()).cluster
    assert a is not None and b is not None
    assert (a.lease_ttl_ms, a.renew_every_ms, a.node_explicit) == (15_000, 5_000, False)
    assert a.node != b.node, "two starts on one host get two names"
    assert a.fence_margin_ms == 3_000  # a fifth of lease_ttl
    named = parse_config(cluster(node="web-1", lease_ttl="3s", renew_every="1s")).cluster
    assert named is not None and (named.node, named.node_explicit, named.lease_ttl_ms) == ("web-1", True, 3000)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"renew_every": "6s"}, "cluster.renew_every: must be > 0 and at most a third of lease_ttl (15000 ms)"),
        ({"lease_ttl": "500ms"}, "cluster.lease_ttl: must be at least 1s"),
        ({"lease_ttl": "soon"}, "cluster.lease_ttl:"),
        ({"node": "two words"}, "cluster.node: expected a name matching"),
        ({"store": "sqlite:///x.db"}, 'cluster.store: expected a postgresql:// URL, got "sqlite:///x.db"'),
        ({"nodes": 3}, "cluster.nodes: unknown key"),
    ],
)
def test_bad_cluster_keys_are_named(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(cluster(**keys))


def test_the_store_is_required() -> None:
    with pytest.raises(ConfigError, match="cluster.store: is required"):
        parse_config({"cluster": {}})


def test_placement_values_and_where_they_apply() -> None:
    assert [placement_copies(p) for p in ("every", "one", "any:3")] == [None, 1, 3]
    svc = {"command": ["sleep", "1"]}
    config = parse_config({**cluster(), "services": {"a": {**svc, "placement": "any:2"}}})
    assert config.services["a"].placement == "any:2"
    with pytest.raises(ConfigError, match='services.a.placement: expected "every", "one" or "any:N"'):
        parse_config({**cluster(), "services": {"a": {**svc, "placement": "two"}}})
    with pytest.raises(ConfigError, match=r'services.a.placement: "one" needs a \[cluster\] table'):
        parse_config({"services": {"a": {**svc, "placement": "one"}}})
    with pytest.raises(ConfigError, match="services.a.placement: applies to long-running services"):
        parse_config({**cluster(), "services": {"a": {**svc, "every": "1m", "placement": "one"}}})
    with pytest.raises(ConfigError, match="supervisor.store: differs from cluster.store"):
        parse_config({**cluster(), "supervisor": {"store": "postgresql://other/db"}})
