"""Runs under leases: the PostgreSQL store as one cluster node sees it (docs/cluster.md).

Wraps a `PostgresStore`. A run this node takes (inserted in flight, or claimed
out of `queued`/`due`/`buffered`/`pending`) gets `node`, a new `epoch` (the
fencing token) and `expires_at = now() + lease_ttl`; the node remembers the
epoch. Every later write about that run is a compare-and-set on
`(run_id, epoch, node)`: once the lease is gone (rescued by the leader, or
revoked here because renewals failed), the write changes nothing. Writes
about runs this node holds no lease on never touch a run in flight elsewhere.

Each thread gets its own connection: the history writer's retries during an
outage never hold up the event loop's calls, and a thread running an event
loop fails fast (one attempt, a short connect timeout) instead of stalling
supervision; the scheduler tries an occurrence again later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from supervise.supervisor.core.runs import FINAL, Run, RunState
from supervise.supervisor.store.base import RUN_COLUMNS, row_to_run, run_to_row
from supervise.supervisor.store.postgres import PostgresStore, idle_transaction_limit

log = logging.getLogger("supervise.cluster")

IN_FLIGHT: Final = frozenset({RunState.STARTING, RunState.RUNNING})
TAKEABLE: Final = [s.value for s in (RunState.QUEUED, RunState.DUE, RunState.BUFFERED, RunState.PENDING)]
# What `claim_due_oneshots` takes: one state, so the (state, nominal_time, run_id) index hands the
# soonest rows over in order and the LIMIT stops the scan (a `due` row, left by an earlier
# version, is the leader's to queue again).
DUE_ONESHOT: Final = [RunState.PENDING.value]
_JSON: Final = ("args", "result")
INSERT_CHUNK: Final = 500  # rows per multi-row INSERT (PostgreSQL binds at most 65 535 parameters)
_RETURNED: Final = ", ".join(f"r.{c}::text AS {c}" if c in _JSON else f"r.{c}" for c in RUN_COLUMNS)


class LeasedRuns:
    """A `Store` whose run writes are fenced by this node's leases; other calls pass through."""

    def __init__(self, store: PostgresStore, *, node: str, lease_ttl_ms: int) -> None:
        self.store = store
        self.node = node
        self.lease_ttl_s = lease_ttl_ms / 1000
        self._held: dict[str, int] = {}  # run id -> epoch of the lease this node holds
        self._revoked: set[str] = set()  # leases lost: writes about these runs are dropped
        self._lock = threading.Lock()
        self.fenced_writes = 0  # writes refused because the lease was gone
        self._stores: dict[int | str, PostgresStore] = {}  # thread id (or "executor") -> its connection
        self._stores_lock = threading.Lock()
        self._pending = threading.local()  # inside `batch()`: bookkeeping to do once it commits
        # Set by the node's agent (docs/cluster.md):
        self.fence_until: float | None = None  # CLOCK_MONOTONIC time this node's run leases are trusted to
        self.fence_grace_ms = 0  # how long past fence_until a warm worker may take to cancel a run
        self.on_claimable: Callable[[str], None] | None = None  # a run of this service was left queued for any node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db(), name)

    def _db(self) -> PostgresStore:
        """This thread's store: one connection per thread, except that the event loop's executor
        threads (`asyncio.to_thread`) share one, its calls taking turns (the store's lock; a
        `batch()` holds it to its end), so a node needs a few connections per schema, not one
        per executor thread."""
        key: int | str = "executor" if threading.current_thread().name.startswith("asyncio_") else threading.get_ident()
        with self._stores_lock:
            found = self._stores.get(key)
        if found is not None:
            return found
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        mine = PostgresStore(
            self.store.dsn,
            schema=self.store.schema,
            connect_timeout_s=2.0 if on_loop else self.store.connect_timeout_s,
            reconnect_attempts=1 if on_loop else self.store.reconnect_attempts,
            reconnect_delay_ms=50 if on_loop else self.store.reconnect_delay_ms,
            options=idle_transaction_limit(int(self.lease_ttl_s * 1000)),
        )
        mine.open()  # the schema exists (the supervisor opened `store`): this only checks it
        with self._stores_lock:
            self._stores[key] = mine
        return mine

    def open(self) -> LeasedRuns:
        self.store.open()
        return self

    def close(self) -> None:
        with self._stores_lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            store.close()
        self.store.close()

    def __enter__(self) -> LeasedRuns:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction on this thread's connection (`PostgresStore.batch`). A lease that a
        run's final write ends is forgotten only once the transaction commits: rolled back, the
        write is tried again under the same lease."""
        if getattr(self._pending, "after", None) is not None:  # nested
            with self._db().batch():
                yield
            return
        after: list[Callable[[], None]] = []
        self._pending.after = after
        try:
            with self._db().batch():
                yield
        finally:
            self._pending.after = None
        for action in after:
            action()

    def _after_commit(self, action: Callable[[], None]) -> None:
        after: list[Callable[[], None]] | None = getattr(self._pending, "after", None)
        if after is None:
            action()
        else:
            after.append(action)

    # -- the leases this node holds ---------------------------------------------------------

    def epoch_of(self, run_id: str) -> int | None:
        """The epoch of this node's lease on `run_id`, or None."""
        with self._lock:
            return self._held.get(run_id)

    def held(self) -> list[tuple[str, int]]:
        """Every run lease this node holds, `(run_id, epoch)`, for the heartbeat to renew."""
        with self._lock:
            return list(self._held.items())

    def revoke(self, run_ids: set[str] | frozenset[str]) -> list[str]:
        """These leases are gone: forget them, and drop every later write about those runs.
        Returns the ids that were held."""
        with self._lock:
            gone = [r for r in run_ids if self._held.pop(r, None) is not None]
            self._revoked.update(gone)
            return gone

    def worker_lease(self, run_id: str) -> dict[str, object]:
        """The lease fields of a "run" message for a warm worker (docs/protocol.md): the
        deadline it enforces on its own, or nothing when this node holds no lease on the run."""
        if self.fence_until is None or self.epoch_of(run_id) is None:
            return {}
        return {"lease_until": self.fence_until, "lease_grace_ms": self.fence_grace_ms}

    def _claimable(self, run: Run) -> None:
        """Wake the other nodes for a queued run, once it is committed (inside `batch()`, after it)."""
        if run.state is RunState.QUEUED and self.on_claimable is not None:
            callback, service = self.on_claimable, run.service
            self._after_commit(lambda: callback(service))

    # -- writes -----------------------------------------------------------------------------

    def insert_run(self, run: Run) -> bool:
        """Insert; a run inserted in flight (`starting`) is leased to this node at epoch 1. A
        `buffered` run names this node (it waits in this node's memory for a slot), so the
        leader can queue it again should this node die first (`ClusterStore.rescue`)."""
        if run.state not in IN_FLIGHT:
            if run.state is RunState.BUFFERED and run.node is None:
                run = replace(run, node=self.node)
            inserted = self._db().insert_run(run)
            if inserted:
                self._claimable(run)
            return inserted
        row = run_to_row(run, lambda t: t)
        row["node"] = self.node
        columns = list(row)
        values = ", ".join("%s::jsonb" if c in _JSON else "%s" for c in columns)
        query = self._db()._q(
            f"INSERT INTO {{s}}.runs ({', '.join(columns)}, epoch, expires_at) VALUES ({values}, 1, "  # nosec B608 # column names from run_to_row's fixed keys; values are bound parameters
            "now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING"
        )
        params = [*row.values(), self.lease_ttl_s]
        inserted = self._db()._call(lambda conn: conn.execute(query, params).rowcount == 1)
        if inserted:
            with self._lock:
                self._held[run.run_id] = 1
        return inserted

    def insert_waiting(self, runs: list[Run]) -> set[str]:
        """Insert runs that are not in flight (a `schedule` batch of pending one-shots) with one
        multi-row `INSERT … ON CONFLICT DO NOTHING` per INSERT_CHUNK rows, in one transaction;
        returns the ids inserted (an occurrence whose unique key exists already is left out)."""
        if any(run.state in IN_FLIGHT for run in runs):
            raise ValueError("insert_waiting: runs in flight are inserted under a lease (insert_run)")
        if not runs:
            return set()
        rows = [run_to_row(run, lambda t: t) for run in runs]
        columns = list(rows[0])
        one = "(" + ", ".join("%s::jsonb" if c in _JSON else "%s" for c in columns) + ")"
        db = self._db()
        # Every statement is built before the transaction opens: the connection's idle-in-transaction
        # limit (half the lease) counts the client's time between two statements.
        statements = [
            (
                db._q(
                    f"INSERT INTO {{s}}.runs ({', '.join(columns)}) VALUES {', '.join([one] * len(chunk))} "  # nosec B608 # column names from run_to_row's fixed keys; values are bound parameters
                    "ON CONFLICT DO NOTHING RETURNING run_id"
                ),
                [value for row in chunk for value in row.values()],
            )
            for chunk in (rows[start : start + INSERT_CHUNK] for start in range(0, len(rows), INSERT_CHUNK))
        ]

        def insert(conn: psycopg.Connection[dict[str, Any]]) -> set[str]:
            inserted: set[str] = set()
            with conn.transaction():
                for query, params in statements:
                    inserted.update(str(r["run_id"]) for r in conn.execute(query, params).fetchall())
            return inserted

        done = db._call(insert)
        for run in runs:
            if run.run_id in done:
                self._claimable(run)
        return done

    def claim_due_oneshots(self, service: str, due_by: datetime, limit: int) -> list[Run]:
        """Take up to `limit` of `service`'s one-shots waiting for their time (`pending`) whose
        time is at or before `due_by`, soonest first, in one statement: each becomes
        `starting` under a new epoch, leased to this node.

        The rows are picked `FOR UPDATE SKIP LOCKED`: a row another node's claim has locked at
        that moment is passed over, not waited for, so two nodes claiming at once never get
        the same run and neither waits on the other. Returns the runs as they were before
        the claim (`pending`), so the caller starts them from there.
        """
        if limit <= 0:
            return []
        db = self._db()
        query = db._q(
            "WITH c AS (SELECT run_id, state AS was FROM {s}.runs WHERE state = ANY(%s) AND service = %s "  # nosec B608 # column names from RUN_COLUMNS; values are bound parameters
            "AND nominal_time <= %s ORDER BY nominal_time, run_id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE {s}.runs r SET state = %s, node = %s, epoch = r.epoch + 1, "
            "expires_at = now() + make_interval(secs => %s) FROM c WHERE r.run_id = c.run_id "
            f"RETURNING {_RETURNED}, c.was, r.epoch"
        )
        params = (
            DUE_ONESHOT,
            service,
            due_by,
            limit,
            RunState.STARTING.value,
            self.node,
            self.lease_ttl_s,
        )
        rows = db._call(lambda conn: conn.execute(query, params).fetchall())
        taken: list[Run] = []
        for row in sorted(rows, key=lambda r: (r["nominal_time"], r["run_id"])):
            row["state"] = row["was"]
            taken.append(row_to_run(row, lambda t: t.astimezone(UTC)))
        with self._lock:
            for row in rows:
                self._held[str(row["run_id"])] = int(row["epoch"])
                self._revoked.discard(str(row["run_id"]))
        return taken

    def due_services(self, due_by: datetime) -> set[str]:
        """The services that have one-shots waiting (`pending`) whose time is at or
        before `due_by`: what a node looks for at each poll, should a wake-up have been missed."""
        db = self._db()
        query = db._q("SELECT DISTINCT service FROM {s}.runs WHERE state = ANY(%s) AND nominal_time <= %s")
        rows = db._call(lambda conn: conn.execute(query, (DUE_ONESHOT, due_by)).fetchall())
        return {str(row["service"]) for row in rows}

    def claim(self, run_id: str) -> int | None:
        """Take a waiting run (queued, due, buffered or pending) for this node: it becomes
        `starting` under a new epoch, which is returned; None when another node has it."""
        query = self._db()._q(
            "UPDATE {s}.runs SET state = %s, node = %s, epoch = epoch + 1, "
            "expires_at = now() + make_interval(secs => %s) WHERE run_id = %s AND state = ANY(%s) RETURNING epoch"
        )
        params = (RunState.STARTING.value, self.node, self.lease_ttl_s, run_id, TAKEABLE)
        row = self._db()._call(lambda conn: conn.execute(query, params).fetchone())
        if row is None:
            return None
        epoch = int(row["epoch"])
        with self._lock:
            self._held[run_id] = epoch
            self._revoked.discard(run_id)
        return epoch

    def claim_many(self, run_ids: list[str]) -> dict[str, int]:
        """`claim` for several runs in one statement: the ones taken, with their epochs."""
        if not run_ids:
            return {}
        query = self._db()._q(
            # rows locked in run id order, as the history writer's batches lock them
            "WITH c AS (SELECT run_id FROM {s}.runs WHERE run_id = ANY(%s) AND state = ANY(%s) "
            "ORDER BY run_id FOR UPDATE) "
            "UPDATE {s}.runs r SET state = %s, node = %s, epoch = r.epoch + 1, "
            "expires_at = now() + make_interval(secs => %s) FROM c WHERE r.run_id = c.run_id "
            "RETURNING r.run_id, r.epoch"
        )
        params = (run_ids, TAKEABLE, RunState.STARTING.value, self.node, self.lease_ttl_s)
        rows = self._db()._call(lambda conn: conn.execute(query, params).fetchall())
        taken = {str(row["run_id"]): int(row["epoch"]) for row in rows}
        with self._lock:
            self._held.update(taken)
            self._revoked.difference_update(taken)
        return taken

    def update_run(self, run: Run, *, expected_state: RunState | None = None) -> bool:
        """Write `run` over its row: under this node's lease, a compare-and-set on the epoch;
        without one, only while the row is not in flight (on any node)."""
        with self._lock:
            if run.run_id in self._revoked:
                self.fenced_writes += 1
                log.info("run %s: write (%s) dropped, this node's lease on it is gone", run.run_id, run.state)
                return False
            epoch = self._held.get(run.run_id)
        row = run_to_row(run, lambda t: t)
        run_id = row.pop("run_id")
        if epoch is not None:
            row["node"] = self.node
        assignments = ", ".join(f"{c} = %s::jsonb" if c in _JSON else f"{c} = %s" for c in row)
        params: list[object] = [*row.values(), run_id]
        if epoch is not None:
            guard = " AND epoch = %s AND node = %s"
            params += [epoch, self.node]
            if run.state not in IN_FLIGHT:
                assignments += ", expires_at = NULL"  # the lease ends with the run (or its requeue)
        else:
            guard = " AND NOT (state = ANY(%s))"
            params.append([s.value for s in IN_FLIGHT])
        if expected_state is not None:
            guard += " AND state = %s"
            params.append(expected_state.value)
        query = self._db()._q(f"UPDATE {{s}}.runs SET {assignments} WHERE run_id = %s{guard}")  # nosec B608 # column names from run_to_row's fixed keys; values are bound parameters

        def write(conn: psycopg.Connection[dict[str, Any]]) -> bool:
            return bool(conn.execute(query, params).rowcount == 1)

        done = self._db()._call(write)
        if done:
            self._claimable(run)
        if epoch is not None:
            if not done:
                with self._lock:
                    self._held.pop(run.run_id, None)
                    self._revoked.add(run.run_id)
                    self.fenced_writes += 1
                log.warning(
                    "run %s: write (%s) refused, its lease (epoch %d) was taken over", run.run_id, run.state, epoch
                )
            elif run.state in FINAL or run.state not in IN_FLIGHT:
                self._after_commit(lambda: self._release(run.run_id, epoch))
        return done

    def _release(self, run_id: str, epoch: int) -> None:
        with self._lock:
            if self._held.get(run_id) == epoch:
                self._held.pop(run_id)
