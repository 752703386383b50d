"""What the HTTP API keeps: tokens (hashed), the audit log, owners, tasks, idempotent answers.

One SQLite file, `api.db` in the state directory (mode 0600), written both by
the daemon and by `supervise token ...` / `supervise audit` (WAL, so a reader
never waits on a writer). A token is shown once, at creation: only the SHA-256
of its secret part is stored, and the secret is compared in constant time.

Token format: `svt_<id>_<secret>`: the id (12 hex digits) finds the row, the
secret (43 url-safe characters, 256 bits) proves the holder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.tenants import TENANT_RE

if TYPE_CHECKING:
    from supervise.supervisor.api.cluster_tokens import ClusterTokens

log = logging.getLogger("supervise.api")

FILE_NAME = "api.db"
TOKEN_RE = re.compile(r"svt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
AUDIT_KEEP = 100_000  # audit entries kept (the newest)
_DUMMY_HASH = hashlib.sha256(b"not a token").hexdigest()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, hash TEXT NOT NULL, role TEXT NOT NULL,
    tenant TEXT, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, last_used_at REAL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, token TEXT, tenant TEXT, remote TEXT,
    method TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS owners (service TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, tenant TEXT, service TEXT NOT NULL, oneshot_id TEXT NOT NULL, at TEXT NOT NULL,
    request TEXT NOT NULL, created_at REAL NOT NULL, cancelled_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_tenant ON tasks (tenant, created_at);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    token_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
    body TEXT NOT NULL, headers TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (token_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);
CREATE TABLE IF NOT EXISTS task_notify (task_id TEXT PRIMARY KEY, sent_at REAL, event TEXT);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, created_at REAL NOT NULL, max_pending_tasks INTEGER, max_runs_per_minute INTEGER
);
"""


class Role(IntEnum):
    """What a token may do; each role may do everything of the ones below it."""

    VIEWER = 1  # reads
    OPERATOR = 2  # also acts: start/stop/..., runs now, cancels, creates tasks
    ADMIN = 3  # also manages: creates, changes and deletes jobs and services

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f'role must be viewer, operator or admin, got "{text}"') from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Token:
    """A stored token (never its secret)."""

    id: str
    name: str
    role: Role
    tenant: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def as_dict(self) -> dict[str, Any]:
        def iso(value: float | None) -> str | None:
            return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds") if value is not None else None

        return {
            "id": self.id,
            "name": self.name,
            "role": str(self.role),
            "tenant": self.tenant,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: str
    tenant: str | None
    service: str
    oneshot_id: str
    at: str
    request: dict[str, Any]
    created_at: float
    cancelled_at: float | None


@dataclass(frozen=True, slots=True)
class TenantQuotas:
    """A tenant's own quotas; None: the daemon's `tenant_max_pending_tasks` / `tenant_max_runs_per_minute`."""

    max_pending_tasks: int | None = None
    max_runs_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class Remembered:
    """The first answer to a POST with an `Idempotency-Key`."""

    fingerprint: str
    status: int
    body: str
    headers: dict[str, str]


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiStore:
    """The API's SQLite file; every method is one short transaction."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._deferred: list[tuple[str, tuple[object, ...]]] | None = None  # None: every write at once
        self._schedule: Callable[[Callable[[], None]], object] | None = None
        self._audits = 0
        self.shared: ClusterTokens | None = None  # cluster mode: the tokens are the cluster's

    def share_tokens(self, shared: ClusterTokens) -> None:
        """From now on the tokens are `shared`'s (cluster mode, cluster_tokens.py), not this file's."""
        self.shared = shared

    def local_token_rows(self) -> list[tuple[Any, ...]]:
        """This file's own token rows, hash included (cluster_tokens.COLUMNS order)."""
        return [
            tuple(r)
            for r in self._q(
                "SELECT id, name, role, tenant, created_at, expires_at, revoked_at, last_used_at, hash"
                " FROM tokens ORDER BY created_at"
            ).fetchall()
        ]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()
            if self.shared is not None:
                self.shared.close()

    # -- writing: at once, or behind (batched per event-loop turn) ----------------------------

    def write_behind(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        """Queue the frequent writes (tasks, audit entries, idempotent answers, notification marks) and
        commit them together in one transaction, by `flush`, which `schedule` is asked to call soon
        (the daemon: at the next turn of its event loop). Every read, transaction and `close` flushes
        first, so what was written is always what is read."""
        self._deferred = []
        self._schedule = schedule

    def flush(self) -> None:
        """Commit the queued writes in one transaction (nothing queued: nothing to do)."""
        if not self._deferred:
            return
        batch, self._deferred = self._deferred, []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in batch:
                self._db.execute(sql, params)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _w(self, sql: str, params: tuple[object, ...]) -> None:
        """A write that may wait for the turn's batch."""
        if self._deferred is None:
            self._db.execute(sql, params)
            return
        if not self._deferred and self._schedule is not None:
            self._schedule(self._flush_logged)
        self._deferred.append((sql, params))

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except sqlite3.Error:
            log.exception("cannot write to %s; the API's last writes are lost", self.path)

    def _q(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        """A read, or a write that must not wait: after the queued writes."""
        self.flush()
        return self._db.execute(sql, params)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.flush()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- tokens ------------------------------------------------------------------

    def create_token(
        self, name: str, role: Role, tenant: str | None, expires_in: timedelta | None
    ) -> tuple[str, Token]:
        """A new token; returns its full text (shown once, never stored) and its row."""
        if not NAME_RE.fullmatch(name):
            raise ValueError(f'token name must match {NAME_RE.pattern}, got "{name}"')
        if tenant is not None and not TENANT_RE.fullmatch(tenant):
            raise ValueError(f'tenant must match {TENANT_RE.pattern}, got "{tenant}"')
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + expires_in.total_seconds() if expires_in is not None else None
        clash = ValueError(f'a token named "{name}" exists; revoke it or choose another name')
        if self.shared is not None:
            if not self.shared.insert((token_id, name, str(role), tenant, now, expires, None, None, _hash(secret))):
                raise clash
            if tenant is not None:
                self._q("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (tenant, now))
            return f"svt_{token_id}_{secret}", Token(token_id, name, role, tenant, now, expires, None, None)
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO tokens (id, name, hash, role, tenant, created_at, expires_at) VALUES (?,?,?,?,?,?,?)",
                    (token_id, name, _hash(secret), str(role), tenant, now, expires),
                )
                if tenant is not None:  # a token of a tenant not created yet creates it
                    db.execute("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (tenant, now))
        except sqlite3.IntegrityError:
            raise clash from None
        return f"svt_{token_id}_{secret}", Token(token_id, name, role, tenant, now, expires, None, None)

    def tokens(self) -> list[Token]:
        """Every token, oldest first (the cluster's in cluster mode)."""
        if self.shared is not None:
            rows = self.shared.rows()
            return [Token(r[0], r[1], Role.parse(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]
        rows = self._q(
            "SELECT id, name, role, tenant, created_at, expires_at, revoked_at, last_used_at"
            " FROM tokens ORDER BY created_at"
        ).fetchall()
        return [Token(r[0], r[1], Role.parse(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def usable_token_count(self) -> int:
        now = time.time()
        return sum(1 for t in self.tokens() if t.usable(now))

    def revoke(self, name_or_id: str) -> bool:
        if self.shared is not None:
            return self.shared.revoke(name_or_id, time.time())
        with self._tx() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE (name = ? OR id = ?) AND revoked_at IS NULL",
                (time.time(), name_or_id, name_or_id),
            )
        return cur.rowcount > 0

    def verify(self, text: str) -> Token | None:
        """The usable token `text` is, or None; the secret is compared in constant time."""
        match = TOKEN_RE.fullmatch(text)
        token_id, secret = (match[1], match[2]) if match else ("", text)
        if self.shared is not None:
            row = self.shared.find(token_id)  # StoreError: the cluster store cannot be read
        else:
            # Not after the queued writes: tokens are written at once (only last_used_at waits), and a flush
            # here would commit each request's writes alone.
            row = self._db.execute(
                "SELECT id, name, role, tenant, created_at, expires_at, revoked_at, last_used_at, hash"
                " FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
        stored = row[8] if row is not None else _DUMMY_HASH  # the same work whether the id exists or not
        if not hmac.compare_digest(stored, _hash(secret)) or row is None or match is None:
            return None
        token = Token(row[0], row[1], Role.parse(row[2]), row[3], row[4], row[5], row[6], row[7])
        now = time.time()
        if not token.usable(now):
            return None
        if token.last_used_at is None or now - token.last_used_at > 60:
            if self.shared is not None:
                self._touch_shared(token.id, now)
                return token
            self._w("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token.id))
        return token

    def _touch_shared(self, token_id: str, now: float) -> None:
        shared = self.shared
        assert shared is not None
        shared.note_used(token_id, now)

        def touch() -> None:
            try:
                shared.touch(token_id, now)
            except StoreError as e:
                log.warning("cannot record a token's last use in the cluster store: %s", e)

        if self._schedule is not None:
            self._schedule(touch)  # the daemon: at the next turn of the event loop, not in the request's path
        else:
            touch()

    # -- audit ---------------------------------------------------------------------

    def audit(self, token: Token | None, remote: str | None, method: str, path: str, status: int, detail: str) -> None:
        """Record one call; the oldest entries beyond AUDIT_KEEP are deleted, a thousand at a time."""
        self._w(
            "INSERT INTO audit (ts, token, tenant, remote, method, path, status, detail) VALUES (?,?,?,?,?,?,?,?)",
            (
                time.time(),
                token.name if token else None,
                token.tenant if token else None,
                remote,
                method,
                path,
                status,
                detail[:1000],
            ),
        )
        self._audits += 1
        if self._audits % 1000 == 0:
            self._w("DELETE FROM audit WHERE seq <= (SELECT max(seq) FROM audit) - ?", (AUDIT_KEEP,))

    def audit_entries(self, limit: int = 100, tenant: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` audit entries, oldest first."""
        where, params = ("WHERE tenant = ?", [tenant]) if tenant is not None else ("", [])
        rows = self._q(
            "SELECT seq, ts, token, tenant, remote, method, path, status, detail FROM audit"  # nosec B608 # table and column names are this module's constants; values are bound parameters
            f" {where} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        keys = ("seq", "ts", "token", "tenant", "remote", "method", "path", "status", "detail")
        entries = [dict(zip(keys, r, strict=True)) for r in reversed(rows)]
        for e in entries:
            e["ts"] = datetime.fromtimestamp(e["ts"], UTC).isoformat(timespec="milliseconds")
        return entries

    # -- owners: which tenant a service belongs to -------------------------------------

    def owners(self) -> dict[str, str]:
        return dict(self._q("SELECT service, tenant FROM owners").fetchall())

    def set_owner(self, service: str, tenant: str | None) -> None:
        if tenant is None:
            self._q("DELETE FROM owners WHERE service = ?", (service,))
        else:
            self._q("INSERT OR REPLACE INTO owners (service, tenant) VALUES (?, ?)", (service, tenant))

    # -- tasks -------------------------------------------------------------------------

    def add_task(self, row: TaskRow) -> None:
        self._w(
            "INSERT INTO tasks (id, tenant, service, oneshot_id, at, request, created_at) VALUES (?,?,?,?,?,?,?)",
            (row.id, row.tenant, row.service, row.oneshot_id, row.at, json.dumps(row.request), row.created_at),
        )

    def task(self, task_id: str) -> TaskRow | None:
        row = self._q(
            "SELECT id, tenant, service, oneshot_id, at, request, created_at, cancelled_at FROM tasks WHERE id = ?",
            (task_id,),
        ).fetchone()
        return _task(row) if row else None

    def tasks(self, tenant: str | None, *, everyone: bool, limit: int, before: float | None) -> list[TaskRow]:
        """Tasks newest first: of `tenant` (or of every tenant when `everyone`), created before `before`."""
        clauses: list[str] = []
        params: list[object] = []
        if not everyone:
            clauses.append("tenant IS ?")
            params.append(tenant)
        if before is not None:
            clauses.append("created_at < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._q(
            f"SELECT id, tenant, service, oneshot_id, at, request, created_at, cancelled_at FROM tasks {where}"  # nosec B608 # table and column names are this module's constants; values are bound parameters
            " ORDER BY created_at DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [_task(r) for r in rows]

    def cancel_task(self, task_id: str) -> None:
        self._q("UPDATE tasks SET cancelled_at = ? WHERE id = ?", (time.time(), task_id))

    # -- task notifications: open until the task's message is in the outbox --------------

    def open_task_notify(self, task_id: str) -> None:
        self._w("INSERT OR IGNORE INTO task_notify (task_id) VALUES (?)", (task_id,))

    def open_task_notifies(self) -> list[str]:
        """Tasks with a notify rule whose message is not yet in the outbox."""
        return [r[0] for r in self._q("SELECT task_id FROM task_notify WHERE sent_at IS NULL").fetchall()]

    def close_task_notify(self, task_id: str, event: str | None) -> None:
        """The task's message is in the outbox (`event`), or none is due (None: cancelled, or not in `on`)."""
        self._w("UPDATE task_notify SET sent_at = ?, event = ? WHERE task_id = ?", (time.time(), event or "", task_id))

    def task_notify_event(self, task_id: str) -> tuple[bool, str | None] | None:
        """(closed, event) of a task's notification; None when it has no notify rule."""
        row = self._q("SELECT sent_at, event FROM task_notify WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else (row[0] is not None, row[1] or None)

    # -- tenants -----------------------------------------------------------------------------

    def create_tenant(self, name: str, quotas: TenantQuotas | None = None) -> bool:
        """Register a tenant, with quotas of its own or the daemon's; False when it exists."""
        if not TENANT_RE.fullmatch(name):
            raise ValueError(f'tenant must match {TENANT_RE.pattern}, got "{name}"')
        q = quotas or TenantQuotas()
        cur = self._q(
            "INSERT OR IGNORE INTO tenants (name, created_at, max_pending_tasks, max_runs_per_minute) VALUES (?,?,?,?)",
            (name, time.time(), q.max_pending_tasks, q.max_runs_per_minute),
        )
        return cur.rowcount > 0

    def set_quotas(self, name: str, quotas: TenantQuotas) -> bool:
        """Replace a tenant's own quotas (None: the daemon's); False when there is no such tenant."""
        cur = self._q(
            "UPDATE tenants SET max_pending_tasks = ?, max_runs_per_minute = ? WHERE name = ?",
            (quotas.max_pending_tasks, quotas.max_runs_per_minute, name),
        )
        return cur.rowcount > 0

    def quotas(self) -> dict[str, TenantQuotas]:
        """The tenants that have quotas of their own (read without flushing: the table is written at once)."""
        rows = self._db.execute(
            "SELECT name, max_pending_tasks, max_runs_per_minute FROM tenants"
            " WHERE max_pending_tasks IS NOT NULL OR max_runs_per_minute IS NOT NULL"
        ).fetchall()
        return {r[0]: TenantQuotas(r[1], r[2]) for r in rows}

    def tenants(self) -> list[dict[str, Any]]:
        """Every tenant (created, or named by a token, a service or a task), with what it has here."""
        names = {r[0]: r[1] for r in self._q("SELECT name, created_at FROM tenants").fetchall()}
        own = self.quotas()
        token_counts = Counter(t.tenant for t in self.tokens() if t.tenant is not None)  # the cluster's too
        for name in token_counts:
            names.setdefault(name, None)
        for query in (
            "SELECT DISTINCT tenant FROM owners",
            "SELECT DISTINCT tenant FROM tasks WHERE tenant IS NOT NULL",
        ):
            for (name,) in self._q(query).fetchall():
                names.setdefault(name, None)
        out = []
        for name in sorted(names):
            created = names[name]
            out.append(
                {
                    "name": name,
                    "created_at": datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")
                    if created is not None
                    else None,
                    "tokens": token_counts[name],
                    "services": self._count("SELECT count(*) FROM owners WHERE tenant = ?", name),
                    "tasks": self._count("SELECT count(*) FROM tasks WHERE tenant = ?", name),
                    "max_pending_tasks": own.get(name, TenantQuotas()).max_pending_tasks,
                    "max_runs_per_minute": own.get(name, TenantQuotas()).max_runs_per_minute,
                }
            )
        return out

    def _count(self, query: str, *params: object) -> int:
        return int(self._q(query, params).fetchone()[0])

    def tenant_services(self, tenant: str) -> list[str]:
        """The services and jobs of `tenant` (its task services included)."""
        rows = self._q("SELECT service FROM owners WHERE tenant = ? ORDER BY service", (tenant,)).fetchall()
        return [r[0] for r in rows]

    def tenant_rows(self, tenant: str) -> dict[str, Any]:
        """What this file keeps of `tenant`: its tokens (never a secret or a hash), tasks and audit entries."""
        tokens = [t.as_dict() for t in self.tokens() if t.tenant == tenant]
        tasks = []
        for row in self._q(
            "SELECT t.id, t.tenant, t.service, t.oneshot_id, t.at, t.request, t.created_at, t.cancelled_at,"
            " n.sent_at, n.event FROM tasks t LEFT JOIN task_notify n ON n.task_id = t.id"
            " WHERE t.tenant = ? ORDER BY t.created_at",
            (tenant,),
        ).fetchall():
            task = _task(row[:8])
            tasks.append(
                {
                    "id": task.id,
                    "service": task.service,
                    "run_id": task.oneshot_id,
                    "at": task.at,
                    "request": task.request,
                    "created_at": datetime.fromtimestamp(task.created_at, UTC).isoformat(),
                    "cancelled_at": datetime.fromtimestamp(task.cancelled_at, UTC).isoformat()
                    if task.cancelled_at is not None
                    else None,
                    "notified": None if row[8] is None else (row[9] or None),
                }
            )
        count = self._count("SELECT count(*) FROM audit WHERE tenant = ?", tenant)
        return {"tokens": tokens, "tasks": tasks, "audit": self.audit_entries(max(count, 1), tenant)}

    def delete_tenant(self, tenant: str) -> dict[str, int]:
        """Delete every row of `tenant` here, in one transaction, overwriting the freed space (secure_delete)
        and truncating the WAL, so the rows are not left readable in the file; returns how many of each kind."""
        self._q("PRAGMA secure_delete = ON")
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM tokens WHERE tenant = ?", (tenant,)).fetchall()]
            db.executemany("DELETE FROM idempotency WHERE token_id = ?", [(i,) for i in ids])
            tokens = db.execute("DELETE FROM tokens WHERE tenant = ?", (tenant,)).rowcount
            db.execute("DELETE FROM task_notify WHERE task_id IN (SELECT id FROM tasks WHERE tenant = ?)", (tenant,))
            tasks = db.execute("DELETE FROM tasks WHERE tenant = ?", (tenant,)).rowcount
            services = db.execute("DELETE FROM owners WHERE tenant = ?", (tenant,)).rowcount
            audit = db.execute("DELETE FROM audit WHERE tenant = ?", (tenant,)).rowcount
            created = db.execute("DELETE FROM tenants WHERE name = ?", (tenant,)).rowcount
            if self.shared is not None:  # the cluster's tokens of the tenant (their answers are this file's)
                shared_ids = self.shared.delete_tenant(tenant)
                db.executemany("DELETE FROM idempotency WHERE token_id = ?", [(i,) for i in shared_ids])
                tokens = len(set(ids) | set(shared_ids))  # this file's copies of the cluster's count once
        self._q("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"tokens": tokens, "tasks": tasks, "services": services, "audit": audit, "tenant": created}

    # -- idempotency ---------------------------------------------------------------------

    def remembered(self, token_id: str, key: str) -> Remembered | None:
        row = self._q(
            "SELECT fingerprint, status, body, headers FROM idempotency WHERE token_id = ? AND key = ?", (token_id, key)
        ).fetchone()
        return Remembered(row[0], row[1], row[2], json.loads(row[3])) if row else None

    def remember(self, token_id: str, key: str, answer: Remembered, keep_s: float = 86_400) -> None:
        now = time.time()
        self._w("DELETE FROM idempotency WHERE created_at < ?", (now - keep_s,))
        self._w(
            "INSERT OR IGNORE INTO idempotency (token_id, key, fingerprint, status, body, headers, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (token_id, key, answer.fingerprint, answer.status, answer.body, json.dumps(answer.headers), now),
        )


def _task(row: Any) -> TaskRow:
    return TaskRow(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7])
