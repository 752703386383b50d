"""Cluster mode on one PostgreSQL: three local nodes (docs/cluster.md).

    python -m bench.cluster [--dsn postgresql://postgres@127.0.0.1:5432/test] [--json out.json]

- claims/s: three node processes take the same queued runs under leases, losers skip;
  claimed runs over wall time. One at a time (`LeasedRuns.claim`, one compare-and-set per
  run: a drain with one free slot), and 32 at a time (`claim_many`: what a drain with free
  slots does, one statement for the runs it is about to start).
- due one-shots claimed/s: three node processes take 30 000 due one-shots, each 32 at a
  time with `claim_due_oneshots` (`FOR UPDATE SKIP LOCKED … LIMIT 32`: what a node with
  32 free slots does when one-shots come due), never the same run twice; and 6 000 the way
  it was done before, each node trying every run (a compare-and-set out of `pending`, then
  a claim).
- one-shots scheduled/s: 10 000 pending one-shots inserted by 50 (a `schedule` batch), one
  statement per batch (`insert_waiting`), against one `insert_run` per run.
- fire lateness p99: three daemons, 20 interval schedules every second for 15 s; each run's
  start (as its worker saw it) minus its due time, from the store.
- singleton failover: three daemons, a `placement = "one"` service; the holder's supervisor is
  SIGKILLed and the time until another node's copy runs is measured, 3 times.

Everything lives in a throwaway schema, dropped at the end. The machine is shared: figures
are noisy, and this is a smoke-level measurement, not a tuned one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from supervise.protocol.client import Client
from supervise.supervisor.core.runs import RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.cluster import ClusterStore
from supervise.supervisor.store.leased import LeasedRuns
from supervise.supervisor.store.postgres import PostgresStore

LEASE_TTL = "3s"
RENEW_EVERY = "1s"
NOOP = "def noop(ctx):\n    return None\n"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- claims per second -------------------------------------------------------------------------


def _claimer(dsn: str, schema: str, node: str, ids: list[str], batch: int, start: Any, out: Any) -> None:
    runs = LeasedRuns(PostgresStore(dsn, schema=schema), node=node, lease_ttl_ms=60_000).open()
    start.wait()
    if batch == 1:
        won = sum(1 for run_id in ids if runs.claim(run_id) is not None)
    else:
        won = sum(len(runs.claim_many(ids[i : i + batch])) for i in range(0, len(ids), batch))
    out.put((node, won, time.monotonic()))
    runs.close()


def claims_per_second(dsn: str, schema: str, total: int = 6000, batch: int = 1) -> dict[str, float]:
    with PostgresStore(dsn, schema=schema) as store:
        ClusterStore(dsn, schema=schema, node="bench", lease_ttl_ms=60_000).open().close()
        now = datetime.now(UTC)
        runs = [
            transition(
                new_run(f"claims{batch}", at=now, nominal_time=None, origin=RunOrigin.MANUAL), RunState.QUEUED, at=now
            )
            for _ in range(total)
        ]
        store.insert_runs(runs)
    ids = [r.run_id for r in runs]
    # each node walks the queue from its own offset, as nodes whose windows overlap do
    began, ended, results = _race(
        _claimer, [(dsn, schema, f"node{i}", ids[i * total // 3 :] + ids[: i * total // 3], batch) for i in range(3)]
    )
    won = sum(n for _, n, _ in results)
    assert won == total, f"{won} claims won for {total} runs: a run was claimed twice or not at all"
    return {
        "runs": total,
        "batch": batch,
        "seconds": round(ended - began, 3),
        "claims_per_s": round(total / (ended - began)),
    }


def _race(target: Any, node_args: list[tuple[Any, ...]]) -> tuple[float, float, list[Any]]:
    """One process per node running `target(*args, start, out)`, released at once once their
    connections are open; returns (start, the last node's end, what each node put on `out`)."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for args in node_args]
    for p in procs:
        p.start()
    time.sleep(1.0)  # connections open
    began = time.monotonic()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return began, max(at for _, _, at in results), results


def _due_claimer(dsn: str, schema: str, node: str, service: str, batch: int, start: Any, out: Any) -> None:
    runs = LeasedRuns(PostgresStore(dsn, schema=schema), node=node, lease_ttl_ms=60_000).open()
    pending = runs.pending_runs(None, 1_000_000) if batch == 0 else []
    start.wait()
    got: list[str] = []
    if batch == 0:  # the way before: every node moves every due run out of pending (CAS), then claims it
        for run in pending:
            due = transition(run, RunState.DUE, at=datetime.now(UTC))
            if runs.store.update_run(due, expected_state=RunState.PENDING) and runs.claim(run.run_id) is not None:
                got.append(run.run_id)
    else:
        while taken := runs.claim_due_oneshots(service, datetime.now(UTC), batch):
            got += [r.run_id for r in taken]
    out.put((node, got, time.monotonic()))
    runs.close()


def _oneshots(service: str, total: int) -> list[Any]:
    now = datetime.now(UTC)
    return [
        new_run(service, at=now, nominal_time=now, origin=RunOrigin.ONESHOT, state=RunState.PENDING)
        for _ in range(total)
    ]


def due_claims_per_second(dsn: str, schema: str, total: int = 30_000, batch: int = 32) -> dict[str, float]:
    service = f"due{batch}"
    with PostgresStore(dsn, schema=schema) as store:
        ClusterStore(dsn, schema=schema, node="bench", lease_ttl_ms=60_000).open().close()
        store.insert_runs(_oneshots(service, total))
    began, ended, results = _race(_due_claimer, [(dsn, schema, f"node{i}", service, batch) for i in range(3)])
    every = [run_id for _, got, _ in results for run_id in got]
    assert len(every) == len(set(every)) == total, "a due one-shot was claimed twice or not at all"
    return {
        "runs": total,
        "batch": batch,
        "seconds": round(ended - began, 3),
        "claims_per_s": round(total / (ended - began)),
        "per_node": [len(got) for _, got, _ in results],
    }


def scheduled_per_second(dsn: str, schema: str, total: int = 10_000, batch: int = 50) -> dict[str, float]:
    ClusterStore(dsn, schema=schema, node="bench", lease_ttl_ms=60_000).open().close()
    figures: dict[str, float] = {"runs": total, "batch": batch}
    with LeasedRuns(PostgresStore(dsn, schema=schema), node="bench", lease_ttl_ms=60_000) as runs:
        one_by_one = _oneshots("one", total)
        began = time.monotonic()
        for run in one_by_one:
            runs.insert_run(run)
        figures["one_per_statement_per_s"] = round(total / (time.monotonic() - began))
        batched = _oneshots("batched", total)
        began = time.monotonic()
        for i in range(0, total, batch):
            runs.insert_waiting(batched[i : i + batch])
        figures["batch_per_statement_per_s"] = round(total / (time.monotonic() - began))
    return figures


# -- three daemons -----------------------------------------------------------------------------


class Node:
    def __init__(self, root: Path, index: int, url: str, services: str) -> None:
        self.dir = root / f"n{index}"
        self.dir.mkdir()
        (self.dir / "cluster_noop.py").write_text(NOOP)
        config = self.dir / "supervise.toml"
        config.write_text(
            f'[supervisor]\nstate_dir = "state"\n\n[cluster]\nstore = "{url}"\nnode = "n{index}"\n'
            f'lease_ttl = "{LEASE_TTL}"\nrenew_every = "{RENEW_EVERY}"\n\n{services}'
        )
        self.log = open(self.dir / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervise.supervisor", "start", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self.client = Client(f"ipc://{self.dir}/state/control.sock", timeout_s=5.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.call("ping", retries=0)
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"node {index} did not start: {(self.dir / 'daemon.log').read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _rows(dsn: str, schema: str, text: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql.SQL(text).format(s=sql.Identifier(schema)), params).fetchall()  # type: ignore[arg-type]


def fire_lateness(dsn: str, schema: str, root: Path, seconds: float = 15.0, schedules: int = 20) -> dict[str, float]:
    services = "".join(f'[services.t{i:02d}]\ntarget = "cluster_noop:noop"\nevery = "1s"\n\n' for i in range(schedules))
    url = f"{dsn}?schema={schema}"
    (root / "lateness").mkdir()
    nodes = [Node(root / "lateness", i, url, services) for i in range(3)]
    try:
        time.sleep(3.0)  # warm workers up
        began = datetime.now(UTC)
        time.sleep(seconds)
        ended = datetime.now(UTC)
        time.sleep(1.5)
        rows = _rows(
            dsn,
            schema,
            "SELECT extract(epoch FROM started_at - jittered_time)::float8 AS late, node FROM {s}.runs "
            "WHERE origin = 'schedule' AND jittered_time >= %s AND jittered_time < %s AND started_at IS NOT NULL",
            began,
            ended,
        )
    finally:
        for node in nodes:
            node.stop()
    late = sorted(max(0.0, r["late"]) for r in rows)
    by_node = {n: sum(1 for r in rows if r["node"] == n) for n in sorted({r["node"] for r in rows})}
    return {
        "runs": len(late),
        "p50_ms": round(1000 * statistics.median(late), 1),
        "p99_ms": round(1000 * late[min(len(late) - 1, int(len(late) * 0.99))], 1),
        "max_ms": round(1000 * late[-1], 1),
        "runs_by_node": by_node,  # type: ignore[dict-item]
    }


def failover(dsn: str, schema: str, root: Path, rounds: int = 3) -> dict[str, object]:
    services = '[services.single]\ncommand = ["sleep", "100000"]\nplacement = "one"\n'
    url = f"{dsn}?schema={schema}"
    (root / "failover").mkdir()
    nodes = [Node(root / "failover", i, url, services) for i in range(3)]
    reader = ClusterStore(dsn, schema=schema, node="bench", lease_ttl_ms=3000)
    times: list[float] = []

    def holder() -> str | None:
        live = [p["holder"] for p in reader.status()["placements"] if p["name"] == "single" and p["live"]]
        return live[0] if live else None

    def running_on(name: str) -> bool:
        node = next(n for n in nodes if n.dir.name == name)
        status = node.client.call("status", name="single")["services"][0]
        return bool(status["state"] == "RUNNING")

    try:
        for _ in range(rounds):
            deadline = time.monotonic() + 30
            while (h := holder()) is None or not running_on(h):
                if time.monotonic() > deadline:
                    raise RuntimeError("no node runs the singleton")
                time.sleep(0.05)
            victim = next(n for n in nodes if n.dir.name == h)
            killed = time.monotonic()
            victim.proc.kill()
            victim.proc.wait()
            while (new := holder()) in (None, h) or not running_on(new):  # type: ignore[arg-type]
                if time.monotonic() - killed > 30:
                    raise RuntimeError("no takeover within 30 s")
                time.sleep(0.02)
            times.append(time.monotonic() - killed)
            log(f"  failover {len(times)}: {times[-1]:.2f} s ({h} -> {new})")
            nodes.remove(victim)
            victim.stop()
            nodes.append(Node(root / "failover", 10 + len(times), url, services))  # keep three nodes
    finally:
        reader.close()
        for node in nodes:
            node.stop()
    return {"lease_ttl_s": 3.0, "seconds": [round(t, 2) for t in times], "max_s": round(max(times), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    ap.add_argument(
        "--dsn", default=os.environ.get("SUPERVISE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    schemas = [f"supervise_bench_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    root = Path(tempfile.mkdtemp(prefix="sv-bc-", dir="/tmp"))
    figures: dict[str, object] = {}
    try:
        log("claims per second (three node processes) ...")
        figures["claims"] = claims_per_second(args.dsn, schemas[0], batch=1)
        figures["claims_batched"] = claims_per_second(args.dsn, schemas[0], total=30_000, batch=32)
        log("due one-shots claimed with SKIP LOCKED, and one-shots scheduled in batches ...")
        figures["due_claims"] = due_claims_per_second(args.dsn, schemas[0])
        figures["due_raced"] = due_claims_per_second(args.dsn, schemas[0], total=6000, batch=0)
        figures["scheduled"] = scheduled_per_second(args.dsn, schemas[0])
        log("fire lateness (three daemons, 20 schedules every second) ...")
        figures["lateness"] = fire_lateness(args.dsn, schemas[1], root)
        log("singleton failover (SIGKILL of the holder's supervisor) ...")
        figures["failover"] = failover(args.dsn, schemas[2], root)
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        shutil.rmtree(root, ignore_errors=True)
    claims: Any = figures["claims"]
    batched: Any = figures["claims_batched"]
    late: Any = figures["lateness"]
    fail: Any = figures["failover"]
    print(f"claims/s across 3 nodes: {claims['claims_per_s']} one at a time, {batched['claims_per_s']} 32 at a time")
    print("                          (target >= 2000)")
    due: Any = figures["due_claims"]
    sched: Any = figures["scheduled"]
    raced: Any = figures["due_raced"]
    print(f"due one-shots claimed/s:  {due['claims_per_s']} (32 per SKIP LOCKED claim; per node {due['per_node']})")
    print(f"                          {raced['claims_per_s']} (every node: compare-and-set out of pending, then claim)")
    print(
        f"one-shots scheduled/s:    {sched['batch_per_statement_per_s']} by 50 per statement, "
        f"{sched['one_per_statement_per_s']} one per statement"
    )
    print(f"fire lateness, 3 nodes:   p50 {late['p50_ms']} ms, p99 {late['p99_ms']} ms, max {late['max_ms']} ms")
    print(f"                          over {late['runs']} runs (target p99 <= 50 ms)")
    print(f"singleton failover:       {fail['seconds']} s (lease_ttl 3 s; target <= 5 s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
