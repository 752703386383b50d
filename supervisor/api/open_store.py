"""The API's store of a state directory, with the cluster's tokens in cluster mode (docs/api.md).

Kept apart from `store.py` (the SQLite file) and `cluster_tokens.py` (the PostgreSQL table),
which it joins: neither needs the other to be imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from supervise.supervisor.api.cluster_tokens import ClusterTokens, cluster_location
from supervise.supervisor.api.store import ApiStore

if TYPE_CHECKING:
    from supervise.supervisor.config.cluster import ClusterConfig

log = logging.getLogger("supervise.api")


def open_api_store(state_dir: Path, cluster: ClusterConfig | None, *, node: str) -> ApiStore:
    """The API's store of `state_dir`; with `[cluster]`, its tokens are the cluster table's, and the
    tokens of `api.db` are first copied into that table (ClusterTokens.copy_in).

    Raises:
        StoreError: the cluster store cannot be reached.
    """
    store = ApiStore(state_dir)
    if cluster is None:
        return store
    dsn, schema = cluster_location(cluster.store)
    shared = ClusterTokens(dsn, schema=schema, node=node)
    try:
        shared.open()
        for name in shared.copy_in(store.local_token_rows()):
            log.warning(
                "token \"%s\" of %s is not the cluster's token of that name: the cluster's is kept, "
                "this node's copy is not used",
                name,
                store.path,
            )
    except BaseException:
        shared.close()
        store.close()
        raise
    store.share_tokens(shared)
    return store
