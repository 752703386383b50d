"""The run queue with real workers, a real store, a real daemon and a real local HTTP server.

A burst larger than `concurrency` waits in the queue and drains with nothing
skipped; a worker SIGKILLed mid-burst loses nothing under on_lost = "retry" and
records `lost` under "abandon"; a receiver that never answers does not stop the
worker's heartbeats; a retry carries the same Idempotency-Key.
"""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervise.protocol.errors import SuperviseError
from tests.conftest import Daemon, start_daemon, stop_daemon, wait_for, write_config

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "terminated", "lost", "skipped"}


@dataclass
class Sink:
    """What the local receiver saw, and how it answers."""

    url: str
    arrivals: list[tuple[str, str, float]] = field(default_factory=list)  # (path, idempotency key, time)
    delay_s: float = 0.0
    fail_first: bool = False  # answer 500 to the first call of each key
    block: threading.Event | None = None  # when set: hold every request until the event is set
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keys(self) -> list[str]:
        with self.lock:
            return [key for _, key, _ in self.arrivals]


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key", "")
            with state.lock:
                seen = any(k == key for _, k, _ in state.arrivals)
                state.arrivals.append((self.path, key, time.time()))
            if state.block is not None:
                state.block.wait(60)
            if state.delay_s:
                time.sleep(state.delay_s)
            status = 500 if state.fail_first and not seen else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        if state.block is not None:
            state.block.set()
        server.shutdown()
        server.server_close()
        thread.join()


def runs_of(d: Daemon, name: str, **filters: object) -> list[dict[str, object]]:
    return list(d.client.call("runs", name=name, limit=10_000, **filters)["runs"])


def schedule_burst(d: Daemon, name: str, count: int, *, ahead_s: float = 1.0) -> list[str]:
    at = datetime.now(UTC) + timedelta(seconds=ahead_s)
    return [str(d.client.call("schedule", name=name, at=at.isoformat())["run_id"]) for _ in range(count)]


def http_service(sink: Sink, **keys: object) -> dict[str, object]:
    return {"action": "http", "url": f"{sink.url}/hook", "method": "POST", "body": "{}", **keys}


def test_a_burst_larger_than_concurrency_queues_and_drains_with_nothing_skipped(
    daemon_factory, short_dir: Path
) -> None:
    # Given a Python service that runs 2 at a time, each run 0.3 s
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "burst": {
                "target": "tests.children.jobs:record",
                "manual": True,
                "overlap": "allow_all",
                "concurrency": 2,
                "args": {"sleep_s": 0.3},
                "env": {"RUNS_FILE": str(out)},
            }
        },
        http="127.0.0.1:0",
    )
    d.wait_running_pid("burst")
    # When 12 one-shots fall due at the same moment
    ids = schedule_burst(d, "burst", 12)
    pending = {r["run_id"] for r in runs_of(d, "burst", state="pending")}
    assert pending == set(ids)  # listed before they fire
    depth = wait_for(
        lambda: d.service("burst")["schedule"]["queued"] >= 5 and d.service("burst")["schedule"], what="a queue"
    )
    assert depth["in_flight"] == 2 and depth["concurrency"] == 2
    scraped = scrape(d)
    assert 'supervise_runs_in_flight{service="burst"} 2.0' in scraped
    assert 'supervise_runs_queued{service="burst"}' in scraped
    # Then every one runs, never more than 2 at once, and none is skipped
    done = wait_for(
        lambda: (r := runs_of(d, "burst")) and all(x["state"] in FINAL for x in r) and len(r) == 12 and r,
        timeout_s=30,
        what="all 12 runs to end",
    )
    assert {r["state"] for r in done} == {"succeeded"}
    starts = sorted((r["started_at"], r["finished_at"]) for r in done)
    for i, (start, _) in enumerate(starts):
        overlapping = [s for s, f in starts[:i] if f > start]
        assert len(overlapping) <= 1, starts
    assert d.service("burst")["schedule"]["queued"] == 0
    (figures,) = d.client.call("metrics", name="burst")["services"]
    assert figures["runs_queued"] == 0 and figures["fire_lateness"]["count"] == 12
    assert 'supervise_fire_lateness_seconds_count{service="burst"} 12.0' in scrape(d)


def scrape(d: Daemon) -> str:
    address = d.client.call("ping")["http"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_a_pending_one_shot_is_listed_and_cancelled_by_id_before_it_runs(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {"later": {"target": "tests.children.jobs:record", "manual": True, "env": {"RUNS_FILE": str(out)}}}
    )
    d.wait_running_pid("later")
    (run_id,) = schedule_burst(d, "later", 1, ahead_s=2.0)
    (listed,) = runs_of(d, "later")
    assert (listed["run_id"], listed["state"], listed["origin"]) == (run_id, "pending", "oneshot")
    assert d.client.call("cancel", run_id=run_id)["state"] == "cancelled"
    wait_for(
        lambda: datetime.now(UTC) > datetime.fromisoformat(str(listed["nominal_time"])) + timedelta(seconds=0.5),
        what="its time to pass",
    )
    (after,) = runs_of(d, "later")
    assert after["state"] == "cancelled" and not out.exists()


def _kill_worker_when(d: Daemon, name: str, predicate: object) -> int:
    pid = d.wait_running_pid(name)
    assert callable(predicate)
    wait_for(predicate, timeout_s=20, what="the burst to be under way")
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_worker_killed_mid_burst_loses_nothing_under_on_lost_retry(daemon_factory, sink: Sink) -> None:
    # Given an http service, 4 calls at a time, each answered after 0.2 s
    sink.delay_s = 0.2
    d: Daemon = daemon_factory({"hook": http_service(sink, concurrency=4, on_lost="retry")})
    d.wait_running_pid("hook")
    ids = schedule_burst(d, "hook", 20)
    # When its worker is SIGKILLed while calls are in flight
    old = _kill_worker_when(d, "hook", lambda: len(sink.keys()) >= 6)
    d.wait_running_pid("hook", not_pid=old, timeout_s=20)
    # Then every run's key reaches the receiver, and each occurrence ends with a succeeded attempt
    wait_for(lambda: set(ids) <= set(sink.keys()), timeout_s=30, what="every key to arrive")
    runs = wait_for(
        lambda: (r := runs_of(d, "hook")) and all(x["state"] in FINAL for x in r) and r,
        timeout_s=30,
        what="every run to end",
    )
    by_key: dict[str, set[str]] = {}
    for r in runs:
        by_key.setdefault(str(r["key"]), set()).add(str(r["state"]))
    assert set(by_key) == set(ids)
    assert all("succeeded" in states for states in by_key.values()), by_key
    lost = [r for r in runs if r["state"] == "lost"]
    assert lost, "the kill should have caught calls in flight"
    reruns = [r for r in runs if r["origin"] == "recovery"]
    assert {r["key"] for r in reruns} == {r["run_id"] for r in lost}


def test_a_worker_killed_mid_burst_records_lost_under_on_lost_abandon(daemon_factory, sink: Sink) -> None:
    sink.delay_s = 0.2
    d: Daemon = daemon_factory({"hook": http_service(sink, concurrency=4, on_lost="abandon")})
    d.wait_running_pid("hook")
    ids = schedule_burst(d, "hook", 20)
    old = _kill_worker_when(d, "hook", lambda: len(sink.keys()) >= 6)
    d.wait_running_pid("hook", not_pid=old, timeout_s=20)
    runs = wait_for(
        lambda: (r := runs_of(d, "hook")) and len(r) == 20 and all(x["state"] in FINAL for x in r) and r,
        timeout_s=30,
        what="every run to end",
    )
    states = [r["state"] for r in runs]
    assert "lost" in states and set(states) <= {"lost", "succeeded"}
    assert {r["run_id"] for r in runs} == set(ids)  # no re-runs
    # Runs the dead worker had not been handed ran on the next one
    assert states.count("succeeded") >= 20 - 4 - states.count("lost")
    assert not [r for r in runs if r["origin"] == "recovery"]


def test_a_receiver_that_never_answers_does_not_stop_the_heartbeat(daemon_factory, sink: Sink) -> None:
    # Given 60 calls held open by the receiver, and a worker that must heartbeat every 200 ms
    sink.block = threading.Event()
    d: Daemon = daemon_factory(
        {
            "hook": http_service(
                sink, concurrency=60, request_timeout="60s", heartbeat_interval="200ms", heartbeat_timeout="1500ms"
            )
        }
    )
    pid = d.wait_running_pid("hook")
    schedule_burst(d, "hook", 60, ahead_s=0.5)
    wait_for(lambda: len(sink.keys()) >= 60, timeout_s=20, what=f"60 calls held open ({len(sink.keys())})")
    # Then, for three heartbeat timeouts, the worker stays the same and keeps beating
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        svc = d.service("hook")
        assert svc["pid"] == pid and svc["state"] == "RUNNING"
        assert svc["heartbeat_age"] is not None and svc["heartbeat_age"] < 1.0
        assert svc["schedule"]["in_flight"] == 60
        time.sleep(0.2)
    sink.block.set()
    wait_for(lambda: len(runs_of(d, "hook", state="succeeded")) == 60, timeout_s=20, what="the calls to complete")


def test_a_retry_carries_the_same_idempotency_key(daemon_factory, sink: Sink) -> None:
    sink.fail_first = True
    d: Daemon = daemon_factory({"hook": http_service(sink, retries={"max": 2, "initial": "100ms"})})
    d.wait_running_pid("hook")
    run_id = d.client.call("run", name="hook")["run_id"]
    wait_for(lambda: runs_of(d, "hook", state="succeeded"), timeout_s=15, what="the retry to succeed")
    assert sink.keys() == [run_id, run_id]
    (failed,) = runs_of(d, "hook", state="failed")
    (succeeded,) = runs_of(d, "hook", state="succeeded")
    assert (failed["run_id"], failed["key"]) == (run_id, run_id)
    assert succeeded["key"] == run_id and succeeded["attempt"] == 2


def test_runs_are_shared_among_the_warm_workers_of_processes_n(daemon_factory, short_dir: Path) -> None:
    # Given a scheduled Python service with 2 warm workers taking 2 runs each
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "pool": {
                "target": "tests.children.jobs:record",
                "manual": True,
                "processes": 2,
                "concurrency": 2,
                "args": {"sleep_s": 0.4},
                "env": {"RUNS_FILE": str(out)},
            }
        }
    )
    d.wait_running_pid("pool")
    d.wait_running_pid("pool:1")
    # When 12 one-shots fall due together
    schedule_burst(d, "pool", 12)
    wait_for(lambda: d.service("pool")["schedule"]["in_flight"] == 4, what="4 runs in flight (2 per worker)")
    done = wait_for(
        lambda: len(r := runs_of(d, "pool", state="succeeded")) == 12 and r, timeout_s=30, what="all 12 runs"
    )
    # Then both workers ran them, never more than 2 at once each
    by_pid: dict[int, list[tuple[str, str]]] = {}
    for r in done:
        by_pid.setdefault(int(r["result"]["pid"]), []).append((str(r["started_at"]), str(r["finished_at"])))
    assert len(by_pid) == 2, by_pid.keys()
    for spans in by_pid.values():
        spans.sort()
        for i, (start, _) in enumerate(spans):
            assert len([s for s, f in spans[:i] if f > start]) <= 1, spans
    assert not runs_of(d, "pool", state="skipped")


def test_pending_one_shots_survive_a_restart_and_fire_once(short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    config = write_config(
        short_dir, {"later": {"target": "tests.children.jobs:record", "manual": True, "env": {"RUNS_FILE": str(out)}}}
    )
    d = start_daemon(config)
    try:
        d.wait_running_pid("later")
        ids = schedule_burst(d, "later", 5, ahead_s=4.0)
    finally:
        stop_daemon(d)
    assert not out.exists()
    d2 = start_daemon(config)
    try:
        assert {r["run_id"] for r in runs_of(d2, "later", state="pending")} == set(ids)
        done = wait_for(
            lambda: len(r := runs_of(d2, "later", state="succeeded")) == 5 and r, timeout_s=20, what="5 runs"
        )
        assert {r["run_id"] for r in done} == set(ids)
        assert sorted(line.split()[0] for line in out.read_text().splitlines()) == sorted(ids)  # each ran once
    finally:
        stop_daemon(d2)


def test_a_pending_one_shot_in_a_shared_postgresql_store_runs_on_one_supervisor(short_dir: Path) -> None:
    import uuid

    from tests.contract.conftest import drop_schema, postgres_dsn

    dsn = postgres_dsn()
    schema = f"supervise_test_{uuid.uuid4().hex[:12]}"
    out = short_dir / "runs.txt"
    job = {"target": "tests.children.jobs:record", "manual": True, "env": {"RUNS_FILE": str(out)}}
    daemons = []
    try:
        for host in ("a", "b"):
            folder = short_dir / host
            folder.mkdir()
            daemons.append(start_daemon(write_config(folder, {"shared": job}, store=f"{dsn}?schema={schema}")))
            daemons[-1].wait_running_pid("shared")
            if host == "a":  # added before b starts: both hold them in their windows
                ids = schedule_burst(daemons[0], "shared", 6, ahead_s=3.0)
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 6, timeout_s=20, what="six runs")
        wait_for(lambda: all(r["state"] == "succeeded" for r in runs_of(daemons[1], "shared")), what="the runs to end")
        ran = [line.split()[0] for line in out.read_text().splitlines()]
        assert sorted(ran) == sorted(ids)  # each once, on one of the two
    finally:
        for d in daemons:
            stop_daemon(d)
        drop_schema(dsn, schema)


def test_many_one_shots_are_added_in_one_schedule_request(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {"batch": {"target": "tests.children.jobs:record", "manual": True, "env": {"RUNS_FILE": str(out)}}}
    )
    d.wait_running_pid("batch")
    at = datetime.now(UTC) + timedelta(hours=1)
    runs = [{"at": (at + timedelta(seconds=i)).isoformat(), "args": {"region": f"r{i}"}} for i in range(500)]
    ids = d.client.call("schedule", name="batch", runs=runs)["run_ids"]
    assert len(set(ids)) == 500
    listed = runs_of(d, "batch", state="pending")
    assert {r["run_id"] for r in listed} == set(ids)
    assert {r["args"]["region"] for r in listed} == {f"r{i}" for i in range(500)}
    # A bad entry refuses the whole request, naming it
    bad = [{"at": at.isoformat()}, {"at": "tomorrow"}]
    with pytest.raises(SuperviseError, match=r"runs\[1\]\.at"):
        d.client.call("schedule", name="batch", runs=bad)
    assert len(runs_of(d, "batch")) == 500
