"""Cluster tests: several real daemons on one PostgreSQL schema (docs/cluster.md).

The shared server (tests/contract/conftest.py's DSN) with a schema per test; tests
that must stop or freeze PostgreSQL start their own (`own_postgres`).
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess  # nosec B404 # the test's own PostgreSQL, fixed argv
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, toml_value
from tests.contract.conftest import drop_schema, postgres_dsn
from tests.integration.test_notifications import Receiver, webhook

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class ClusterDb:
    """A schema of a PostgreSQL server: what `[cluster] store` points at."""

    dsn: str
    schema: str

    @property
    def url(self) -> str:
        return f"{self.dsn}?schema={self.schema}"


@pytest.fixture
def cluster_db() -> Iterator[ClusterDb]:
    dsn = postgres_dsn()
    schema = f"supervise_cl_{uuid.uuid4().hex[:12]}"
    try:
        yield ClusterDb(dsn, schema)
    finally:
        drop_schema(dsn, schema)


def write_cluster_config(
    folder: Path,
    db: ClusterDb,
    services: dict[str, dict[str, object]],
    *,
    node: str | None = None,
    lease_ttl: str = "2s",
    renew_every: str = "500ms",
    **supervisor: object,
) -> Path:
    """`supervise.toml` in `folder` (created): [supervisor], [cluster], [services.NAME]."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[supervisor]", 'state_dir = "state"', 'sample_interval = "500ms"']
    lines += [f"{k} = {toml_value(v)}" for k, v in supervisor.items()]
    lines += ["", "[cluster]", f"store = {toml_value(db.url)}"]
    lines += [f"lease_ttl = {toml_value(lease_ttl)}", f"renew_every = {toml_value(renew_every)}"]
    if node is not None:
        lines.append(f"node = {toml_value(node)}")
    for name, keys in services.items():
        lines.append(f"\n[services.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    path = folder / "supervise.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def notifying_cluster_config(
    folder: Path, db: ClusterDb, receiver: Receiver, name: str, services: dict[str, dict[str, object]]
) -> Path:
    """`write_cluster_config` for node `name`, with a `chat` webhook channel to `receiver`."""
    path = write_cluster_config(folder, db, services, node=name)
    lines = ["", "[notify.chat]", *(f"{k} = {toml_value(v)}" for k, v in webhook(receiver).items())]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def nodes(short_dir: Path, launch: Callable[[Path], Daemon]) -> Callable[..., Daemon]:
    """Start cluster daemons, each in its own folder under one short temporary dir."""
    folders = iter(range(1_000))

    def make(db: ClusterDb, services: dict[str, dict[str, object]], **options: object) -> Daemon:
        return launch(write_cluster_config(short_dir / f"n{next(folders)}", db, services, **options))  # type: ignore[arg-type]

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnPostgres:
    """A PostgreSQL server of this test alone, to stop, freeze and restart."""

    data: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(  # nosec B603 B607
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", opts, "-l", str(self.data / "log"), "start")

    def stop(self, mode: str = "immediate") -> None:
        self._ctl("-m", mode, "stop")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL 15's initdb and pg_ctl, and runuser")
    root = Path(tempfile.mkdtemp(prefix="sv-pg-"))
    data = root / "data"
    shutil.chown(root, "postgres", "postgres")
    subprocess.run(  # nosec B603 B607
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = OwnPostgres(data, free_port())
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


def cluster_status(db: ClusterDb) -> dict[str, Any]:
    """What `supervise cluster status --json` shows, read in this process (fast enough to poll)."""
    from supervise.supervisor.store.cluster import ClusterStore

    reader = ClusterStore(db.dsn, schema=db.schema, node="test", lease_ttl_ms=1000)
    try:
        return reader.status()
    finally:
        reader.close()


def holders(db: ClusterDb, service: str) -> list[str]:
    """The nodes holding a live lease on a copy of `service`."""
    return [p["holder"] for p in cluster_status(db)["placements"] if p["name"] == service and p["live"]]


@dataclass
class Sink:
    """A local HTTP receiver: every call's path, Idempotency-Key and Supervise-Epoch."""

    url: str = ""
    delay_s: float = 0.0
    arrivals: list[tuple[str, str, str, float]] = field(default_factory=list)  # (path, key, epoch, time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keys(self, path: str | None = None) -> list[str]:
        with self.lock:
            return [key for p, key, _, _ in self.arrivals if path is None or p == path]


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.arrivals.append(
                    (
                        self.path,
                        self.headers.get("Idempotency-Key", ""),
                        self.headers.get("Supervise-Epoch", ""),
                        time.time(),
                    )
                )
            if state.delay_s:
                time.sleep(state.delay_s)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # a killed node resets its calls
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def query(db: ClusterDb, text: str, *params: object) -> list[dict[str, Any]]:
    """Rows of a query on the cluster's schema (`{s}` is the schema)."""
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    with psycopg.connect(db.dsn, autocommit=True, row_factory=dict_row) as conn:
        statement = sql.SQL(text).format(s=sql.Identifier(db.schema))  # type: ignore[arg-type]
        return conn.execute(statement, params).fetchall()
