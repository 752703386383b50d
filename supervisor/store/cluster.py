"""Cluster coordination on PostgreSQL: nodes, leases with fencing epochs, the leader (docs/cluster.md).

Every time here is the database's `now()`: a node's own clock never decides
whether a lease is alive. Tables, in the run store's schema:

    nodes   (name PK, incarnation, host, pid, started_at, heartbeat_at, expires_at, state live|left|lost)
    leases  (kind, name, slot) PK, holder, epoch, acquired_at, renewed_at, expires_at
            kind "placement": one row per copy of a singleton service;
            kind "leader": the maintenance leader (rescues expired runs, marks lost nodes)
    runs    gains `epoch` (the fencing token) and `expires_at` (the run's lease)

A lease is taken with one compare-and-set (`ON CONFLICT DO UPDATE … WHERE
expires_at <= now()`), which bumps the epoch; renewals and releases match the
holder and the epoch, so a holder that lost its lease changes nothing.

The class is synchronous and keeps its own connection, apart from the run
store's, so heartbeats never queue behind history writes; the daemon calls it
from a thread. `beat` has a connection of its own besides: the renewal never
waits on the leader's maintenance or on relayed commands.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from supervise.supervisor.core.runs import RunState
from supervise.supervisor.store.base import NodeNameTaken
from supervise.supervisor.store.node_connection import NodeConnection
from supervise.supervisor.store.tenants import SCHEMA_INFIX, TENANT_RE

log = logging.getLogger("supervise.cluster")

IN_FLIGHT: Final = [RunState.STARTING.value, RunState.RUNNING.value]
LEADER: Final = "maintenance"

RUN_LEASES: Final[tuple[LiteralString, ...]] = (
    "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0",
    "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS expires_at timestamptz",
    "CREATE INDEX IF NOT EXISTS runs_leased ON {s}.runs (expires_at) WHERE state IN ('starting', 'running')",
)
"""The lease columns of a `runs` table: the main schema's, and each tenant's (cluster_tenants.py)."""

_SCHEMA: Final[tuple[LiteralString, ...]] = (
    """CREATE TABLE IF NOT EXISTS {s}.nodes (
        name text PRIMARY KEY,
        incarnation text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        state text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.leases (
        kind text NOT NULL,
        name text NOT NULL,
        slot integer NOT NULL,
        holder text NOT NULL,
        epoch bigint NOT NULL,
        acquired_at timestamptz NOT NULL,
        renewed_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (kind, name, slot)
    )""",
    *RUN_LEASES,
    """CREATE TABLE IF NOT EXISTS {s}.commands (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node text NOT NULL,
        command text NOT NULL,
        args jsonb NOT NULL,
        state text NOT NULL,
        reply jsonb,
        created_at timestamptz NOT NULL,
        done_at timestamptz
    )""",
    "CREATE INDEX IF NOT EXISTS commands_pending ON {s}.commands (node, id) WHERE state = 'pending'",
)


@dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat found: whether this node is still a member, and which leases it kept."""

    alive: bool
    runs: frozenset[str] = frozenset()  # run ids whose lease was renewed
    placements: frozenset[tuple[str, int]] = frozenset()  # (service, slot) renewed
    leader: bool = False  # this node holds the maintenance lease (renewed or just taken)


@dataclass(frozen=True, slots=True)
class Rescue:
    """What the leader did to runs whose lease expired."""

    requeued: list[str] = field(default_factory=list)  # not started: queued again
    lost: list[dict[str, Any]] = field(default_factory=list)  # started: now `lost` (rows, for on_lost)


class _Renewals(NodeConnection):
    """The connection of a node's heartbeats: nothing else uses it."""

    purpose = "supervise-renew"


class ClusterStore(NodeConnection):
    """The cluster tables of one PostgreSQL schema, seen by one node.

    Args:
        dsn: libpq connection string or URL.
        schema: the run store's schema.
        node: this node's name.
        lease_ttl_ms: how long every lease lives after each renewal.
    """

    purpose = "supervise-cluster"

    def __init__(self, dsn: str, *, schema: str, node: str, lease_ttl_ms: int, timeout_s: float = 2.0) -> None:
        super().__init__(dsn, schema=schema, node=node, lease_ttl_ms=lease_ttl_ms, timeout_s=timeout_s)
        self.incarnation = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.lease_ttl_s = lease_ttl_ms / 1000
        # The held runs grouped by the schema keeping them (ClusterHistory.runs_by_schema, with
        # tenants' schemas); by default every run is in the main schema.
        self.runs_by_schema: Callable[[list[tuple[str, int]]], dict[str, list[tuple[str, int]]]] = lambda runs: {
            self.schema: runs
        }
        self._renewals = _Renewals(dsn, schema=schema, node=node, lease_ttl_ms=lease_ttl_ms, timeout_s=timeout_s)

    def open(self) -> ClusterStore:
        """Create the cluster tables if missing (the run store's schema must exist)."""
        self._create(_SCHEMA)
        return self

    # -- the schemas holding runs: the main one and each tenant's (store/cluster_tenants.py) ------

    def _run_schemas(self, conn: psycopg.Connection[dict[str, Any]]) -> list[str]:
        """The main schema, then every tenant's schema that has a `runs` table (whichever node made it)."""
        prefix = f"{self.schema}{SCHEMA_INFIX}"
        rows = conn.execute(
            "SELECT n.nspname AS name FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
            "WHERE c.relname = 'runs' AND c.relkind IN ('r', 'p') AND left(n.nspname, %s) = %s ORDER BY 1",
            (len(prefix), prefix),
        ).fetchall()
        tenants = [str(r["name"]) for r in rows if TENANT_RE.fullmatch(str(r["name"])[len(prefix) :])]
        return [self.schema, *tenants]

    # -- membership -------------------------------------------------------------------------

    def join(self) -> None:
        """Register this node; raises NodeNameTaken when a live node has the name."""
        query = self._q(
            "INSERT INTO {s}.nodes AS n VALUES (%s, %s, %s, %s, now(), now(), now() + make_interval(secs => %s), "
            "'live') ON CONFLICT (name) DO UPDATE SET incarnation = EXCLUDED.incarnation, host = EXCLUDED.host, "
            "pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now(), expires_at = EXCLUDED.expires_at, "
            "state = 'live' WHERE n.state <> 'live' OR n.expires_at <= now() RETURNING name"
        )
        params = (self.node, self.incarnation, socket.gethostname(), os.getpid(), self.lease_ttl_s)
        row = self._call(lambda conn: conn.execute(query, params).fetchone())
        if row is None:
            raise NodeNameTaken(
                f'node name "{self.node}" is in use by a live node of this cluster; give this node another '
                "[cluster] node name, or remove the key to get a unique one per start"
            )

    def leave(self) -> None:
        """A clean exit: this node's row says `left` and its leases end now, for others to take."""

        def leave(conn: psycopg.Connection[dict[str, Any]]) -> None:
            conn.execute(
                self._q("UPDATE {s}.nodes SET state = 'left', expires_at = now() WHERE name = %s AND incarnation = %s"),
                (self.node, self.incarnation),
            )
            conn.execute(
                self._q("UPDATE {s}.leases SET expires_at = now() WHERE holder = %s AND expires_at > now()"),
                (self.node,),
            )

        self._call(leave)

    def beat(self, runs: list[tuple[str, int]], placements: list[tuple[str, int, int]]) -> Beat:
        """Heartbeat and renew, in one transaction: the node row, the run leases `(run_id, epoch)`,
        the placement leases `(service, slot, epoch)`, and the leadership (taken when free)."""
        ttl = self.lease_ttl_s
        me = self.node

        def beat(conn: psycopg.Connection[dict[str, Any]]) -> Beat:
            # The tenants' schemas are locked (shared) before any row is: a drop waiting on one of them
            # then never waits, through a writer, on a row this transaction holds.
            groups = self.runs_by_schema(runs) if runs else {}
            here = {schema: leases for schema, leases in groups.items() if self._lock_runs(conn, schema)}
            alive = conn.execute(
                self._q(
                    "UPDATE {s}.nodes SET heartbeat_at = now(), expires_at = now() + make_interval(secs => %s) "
                    "WHERE name = %s AND incarnation = %s AND state = 'live' AND expires_at > now() RETURNING name"
                ),
                (ttl, me, self.incarnation),
            ).fetchone()
            if alive is None:
                return Beat(alive=False)
            kept_runs: set[str] = set()
            for schema, leases in here.items():  # a tenant's schema dropped: its leases are gone
                rows = conn.execute(
                    self._in(
                        schema,
                        # rows locked in run id order, as the history writer's batches lock them
                        "WITH h AS (SELECT r.run_id FROM {s}.runs r "
                        "JOIN unnest(%s::text[], %s::bigint[]) AS u(id, ep) ON r.run_id = u.id AND r.epoch = u.ep "
                        "WHERE r.node = %s AND r.state = ANY(%s) AND r.expires_at > now() "
                        "ORDER BY r.run_id FOR UPDATE OF r) "
                        "UPDATE {s}.runs r SET expires_at = now() + make_interval(secs => %s) "
                        "FROM h WHERE r.run_id = h.run_id RETURNING r.run_id",
                    ),
                    ([r[0] for r in leases], [r[1] for r in leases], me, IN_FLIGHT, ttl),
                ).fetchall()
                kept_runs |= {row["run_id"] for row in rows}
            kept_places: set[tuple[str, int]] = set()
            if placements:
                rows = conn.execute(
                    self._q(
                        "UPDATE {s}.leases l SET expires_at = now() + make_interval(secs => %s), renewed_at = now() "
                        "FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS h(name, slot, ep) "
                        "WHERE l.kind = 'placement' AND l.name = h.name AND l.slot = h.slot AND l.epoch = h.ep "
                        "AND l.holder = %s AND l.expires_at > now() RETURNING l.name, l.slot"
                    ),
                    (ttl, [p[0] for p in placements], [p[1] for p in placements], [p[2] for p in placements], me),
                ).fetchall()
                kept_places = {(row["name"], row["slot"]) for row in rows}
            leader = conn.execute(
                self._q(
                    "INSERT INTO {s}.leases AS l VALUES ('leader', %s, 0, %s, 1, now(), now(), "
                    "now() + make_interval(secs => %s)) ON CONFLICT (kind, name, slot) DO UPDATE SET "
                    "epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.epoch "
                    "ELSE l.epoch + 1 END, "
                    "acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.acquired_at "
                    "ELSE now() END, holder = EXCLUDED.holder, renewed_at = now(), expires_at = EXCLUDED.expires_at "
                    "WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder RETURNING epoch"
                ),
                (LEADER, me, ttl),
            ).fetchone()
            return Beat(alive=True, runs=frozenset(kept_runs), placements=frozenset(kept_places), leader=bool(leader))

        return self._renewals._call(beat)

    def close(self) -> None:
        """Close both connections."""
        super().close()
        self._renewals.close()

    # -- singleton placements ---------------------------------------------------------------

    def acquire(self, service: str, copies: int) -> tuple[int, int] | None:
        """Take a free (or expired) copy of `service` for this node: `(slot, epoch)`, or None
        when all `copies` are held by live leases."""
        query = self._q(
            "INSERT INTO {s}.leases AS l VALUES ('placement', %s, %s, %s, 1, now(), now(), "
            "now() + make_interval(secs => %s)) ON CONFLICT (kind, name, slot) DO UPDATE SET "
            "holder = EXCLUDED.holder, epoch = l.epoch + 1, acquired_at = now(), renewed_at = now(), "
            "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() RETURNING slot, epoch"
        )

        def take(conn: psycopg.Connection[dict[str, Any]]) -> tuple[int, int] | None:
            for slot in range(copies):
                row = conn.execute(query, (service, slot, self.node, self.lease_ttl_s)).fetchone()
                if row is not None:
                    return int(row["slot"]), int(row["epoch"])
            return None

        return self._call(take)

    def release(self, service: str, slot: int, epoch: int) -> None:
        """Give a copy back (its worker is stopped): another node may take it at once."""
        query = self._q(
            "UPDATE {s}.leases SET expires_at = now() WHERE kind = 'placement' AND name = %s AND slot = %s "
            "AND epoch = %s AND holder = %s AND expires_at > now()"
        )
        self._call(lambda conn: conn.execute(query, (service, slot, epoch, self.node)))

    def holders(self, service: str) -> list[str]:
        """The nodes holding a live lease on a copy of `service`, by slot."""
        query = self._q(
            "SELECT holder FROM {s}.leases WHERE kind = 'placement' AND name = %s AND expires_at > now() ORDER BY slot"
        )
        return [row["holder"] for row in self._call(lambda conn: conn.execute(query, (service,)).fetchall())]

    # -- the leader's maintenance -----------------------------------------------------------

    def prune_commands(self) -> int:
        """Forget relayed commands answered over an hour ago, or sent over a day ago."""
        query = self._q(
            "DELETE FROM {s}.commands WHERE (state = 'done' AND done_at < now() - interval '1 hour') "
            "OR created_at < now() - interval '1 day'"
        )
        return self._call(lambda conn: max(conn.execute(query).rowcount, 0))

    def mark_lost_nodes(self) -> list[str]:
        """Nodes whose heartbeat expired become `lost`; returns their names."""
        query = self._q(
            "UPDATE {s}.nodes SET state = 'lost' WHERE state = 'live' AND expires_at <= now() RETURNING name"
        )
        return [row["name"] for row in self._call(lambda conn: conn.execute(query).fetchall())]

    def rescue(self) -> Rescue:
        """Runs whose lease expired: not started -> `queued` again; started -> `lost` (the caller
        applies each service's on_lost). Both bump the epoch, so the old holder's writes fail.
        Also one-shots left `due` (unclaimed) for longer than a lease past their time, and
        occurrences `buffered` by a node that is no longer live: `queued`."""
        requeue: LiteralString = (
            "UPDATE {s}.runs SET state = 'queued', epoch = epoch + 1, expires_at = NULL, "
            "reason = 'queued again: the lease of node ' || coalesce(node, '?') || ' expired before it started' "
            "WHERE state = 'starting' AND expires_at <= now() RETURNING run_id"
        )
        lose: LiteralString = (
            "UPDATE {s}.runs SET state = 'lost', epoch = epoch + 1, expires_at = NULL, finished_at = now(), "
            "reason = 'the lease of node ' || coalesce(node, '?') || ' expired while it ran', "
            "error = 'node ' || coalesce(node, '?') || ' stopped renewing its lease' "
            "WHERE state = 'running' AND expires_at <= now() RETURNING run_id"
        )

        # A one-shot a node moved out of `pending` and died before claiming: no lease to expire,
        # so its time passing by more than a lease says nobody runs it.
        orphaned: LiteralString = (
            "UPDATE {s}.runs SET state = 'queued', epoch = epoch + 1, "
            "reason = 'queued again: made due by a node that did not claim it' "
            "WHERE state = 'due' AND expires_at IS NULL AND origin = 'oneshot' "
            "AND nominal_time <= now() - make_interval(secs => %s) RETURNING run_id"
        )

        # An occurrence buffered (overlap) by a node that is gone: it waited in that node's memory.
        abandoned = sql.SQL(
            "UPDATE {s}.runs r SET state = 'queued', epoch = epoch + 1, "
            "reason = 'queued again: node ' || r.node || ', which buffered it, is gone' "
            "WHERE r.state = 'buffered' AND r.node IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {nodes} n "
            "WHERE n.name = r.node AND n.state = 'live' AND n.expires_at > now()) RETURNING r.run_id"
        )

        def rescue(conn: psycopg.Connection[dict[str, Any]]) -> tuple[list[str], list[str]]:
            queued: list[str] = []
            lost: list[str] = []
            nodes = sql.Identifier(self.schema, "nodes")
            for schema in [s for s in self._run_schemas(conn) if self._lock_runs(conn, s)]:  # locked first
                queued += [row["run_id"] for row in conn.execute(self._in(schema, requeue)).fetchall()]
                queued += [
                    row["run_id"] for row in conn.execute(self._in(schema, orphaned), (self.lease_ttl_s,)).fetchall()
                ]
                left = abandoned.format(s=sql.Identifier(schema), nodes=nodes)
                queued += [row["run_id"] for row in conn.execute(left).fetchall()]
                lost += [row["run_id"] for row in conn.execute(self._in(schema, lose)).fetchall()]
            return queued, lost

        queued, lost = self._call(rescue)
        return Rescue(requeued=queued, lost=[{"run_id": run_id} for run_id in lost])

    def members(self) -> dict[str, bool]:
        """Every node by name: True while its heartbeat is live."""
        query = self._q("SELECT name, state = 'live' AND expires_at > now() AS live FROM {s}.nodes")
        return {row["name"]: row["live"] for row in self._call(lambda conn: conn.execute(query).fetchall())}

    # -- control from any node: a command row for the node that holds the thing ---------------

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema's command rows (the payload is the target node)."""
        return f"supervise_commands_{self.schema}"[:63]

    def send(self, node: str, command: str, args: dict[str, Any]) -> int:
        """A command for `node`, and a NOTIFY to wake it; returns the row id to wait on."""

        def send(conn: psycopg.Connection[dict[str, Any]]) -> int:
            row = conn.execute(
                self._q(
                    "INSERT INTO {s}.commands (node, command, args, state, created_at) "
                    "VALUES (%s, %s, %s::jsonb, 'pending', now()) RETURNING id"
                ),
                (node, command, json.dumps(args)),
            ).fetchone()
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, node))
            assert row is not None
            return int(row["id"])

        return self._call(send)

    def reply(self, command_id: int) -> dict[str, Any] | None:
        """The reply of a command once its node answered, else None."""
        query = self._q("SELECT reply FROM {s}.commands WHERE id = %s AND state = 'done'")
        row = self._call(lambda conn: conn.execute(query, (command_id,)).fetchone())
        return None if row is None else dict(row["reply"])

    def take_commands(self) -> list[dict[str, Any]]:
        """The commands waiting for this node, oldest first, marked taken."""
        query = self._q(
            "UPDATE {s}.commands SET state = 'taken' WHERE node = %s AND state = 'pending' RETURNING id, command, args"
        )
        rows = self._call(lambda conn: conn.execute(query, (self.node,)).fetchall())
        return sorted(rows, key=lambda r: int(r["id"]))

    def answer(self, command_id: int, reply: dict[str, Any]) -> None:
        query = self._q("UPDATE {s}.commands SET state = 'done', reply = %s::jsonb, done_at = now() WHERE id = %s")
        self._call(lambda conn: conn.execute(query, (json.dumps(reply, default=str), command_id)))

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Block (in a thread) calling `wake()` on every NOTIFY for this node, until `stop` is set.
        Reconnects after a second when the connection drops; polling covers what is missed meanwhile."""
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.payload == self.node:
                                wake()
            except psycopg.Error:
                stop.wait(1.0)

    # -- what `supervise cluster status` shows ---------------------------------------------

    def status(self) -> dict[str, Any]:
        """Nodes (with heartbeat age and what each holds), placements and the leader, on the database clock."""

        def read(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, Any]:
            now = conn.execute("SELECT now() AS now").fetchone()
            nodes = conn.execute(
                self._q(
                    "SELECT name, host, pid, state, started_at, "
                    "extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s, "
                    "expires_at > now() AND state = 'live' AS live FROM {s}.nodes ORDER BY name"
                )
            ).fetchall()
            held: list[dict[str, Any]] = []
            for schema in self._run_schemas(conn):  # every tenant's schema too
                if self._lock_runs(conn, schema):
                    held += conn.execute(
                        self._in(
                            schema,
                            "SELECT node, count(*)::int AS n FROM {s}.runs WHERE state = ANY(%s) "
                            "AND expires_at > now() GROUP BY node",
                        ),
                        (IN_FLIGHT,),
                    ).fetchall()
            leases = conn.execute(
                self._q(
                    "SELECT kind, name, slot, holder, epoch, expires_at > now() AS live, "
                    "extract(epoch FROM expires_at - now())::float8 AS expires_in_s FROM {s}.leases "
                    "ORDER BY kind, name, slot"
                )
            ).fetchall()
            return {"now": now["now"] if now else None, "nodes": nodes, "runs": held, "leases": leases}

        raw = self._call(read)
        runs: dict[str, int] = {}
        for row in raw["runs"]:
            runs[row["node"]] = runs.get(row["node"], 0) + row["n"]
        leader = next((lease for lease in raw["leases"] if lease["kind"] == "leader" and lease["live"]), None)
        placements = [
            {k: lease[k] for k in ("name", "slot", "holder", "epoch", "live", "expires_in_s")}
            for lease in raw["leases"]
            if lease["kind"] == "placement"
        ]
        nodes = []
        for row in raw["nodes"]:
            nodes.append(
                {
                    "name": row["name"],
                    "host": row["host"],
                    "pid": row["pid"],
                    "state": row["state"] if row["state"] != "live" or row["live"] else "expired",
                    "started_at": _iso(row["started_at"]),
                    "heartbeat_age_s": round(row["heartbeat_age_s"], 3),
                    "runs": runs.get(row["name"], 0),
                    "services": [
                        f"{p['name']}#{p['slot']}" for p in placements if p["holder"] == row["name"] and p["live"]
                    ],
                }
            )
        return {
            "database_time": _iso(raw["now"]),
            "leader": None if leader is None else {"node": leader["holder"], "epoch": leader["epoch"]},
            "nodes": nodes,
            "placements": [p for p in placements],
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
