"""Scheduled services with real workers, a real store and the real daemon."""

from __future__ import annotations

import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Daemon, alive, start_daemon, stop_daemon, wait_for, write_config


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def runs_of(d: Daemon, name: str, **filters: object) -> list[dict[str, object]]:
    result = d.client.call("runs", name=name, limit=100, **filters)
    return list(result["runs"])


def test_interval_runs_are_recorded_with_their_args(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "sync": {
                "target": "tests.children.jobs:record",
                "every": "300ms",
                "args": {"region": "eu"},
                "env": {"RUNS_FILE": str(out)},
            }
        }
    )
    wait_for(lambda: len(lines(out)) >= 3, what="three interval runs")
    assert all(line.split()[1] == "eu" for line in lines(out))
    done = wait_for(lambda: [r for r in runs_of(d, "sync") if r["state"] == "succeeded"], what="succeeded runs")
    assert done[0]["args"] == {"region": "eu"} and done[0]["result"]["region"] == "eu"
    assert done[0]["origin"] == "schedule" and done[0]["nominal_time"]
    svc = d.service("sync")
    assert svc["state"] == "RUNNING"  # the warm worker
    assert svc["schedule"]["next_fire"] and "every" in svc["schedule"]["trigger"]


def test_skip_overlap_never_runs_two_at_once_and_records_the_skips(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "slowjob": {
                "target": "tests.children.jobs:slow",
                "every": "200ms",
                "overlap": "skip",
                "args": {"seconds": 1.0},
                "env": {"RUNS_FILE": str(out)},
            }
        }
    )
    wait_for(lambda: len(runs_of(d, "slowjob", state="skipped")) >= 3, what="skipped occurrences")
    wait_for(lambda: sum(1 for line in lines(out) if line.startswith("end")) >= 1, timeout_s=15, what="a run to end")
    depth, deepest = 0, 0
    for line in lines(out):
        depth += 1 if line.startswith("start") else -1
        deepest = max(deepest, depth)
    assert deepest == 1
    skipped = runs_of(d, "slowjob", state="skipped")
    assert all(str(r["reason"]).startswith("overlap") for r in skipped)


def test_run_now_with_args_and_cancel_end_a_long_run(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {"job": {"target": "tests.children.jobs:slow", "manual": True, "env": {"RUNS_FILE": str(out)}}}
    )
    d.wait_running_pid("job")
    result = d.cli("run", "job", "--args", '{"seconds": 60}')
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[0]
    wait_for(lambda: f"start {run_id}" in lines(out), what="the run to start")
    assert d.cli("cancel", run_id).returncode == 0
    run = wait_for(
        lambda: [r for r in runs_of(d, "job") if r["run_id"] == run_id and r["state"] == "cancelled"], what="cancelled"
    )[0]
    assert f"end {run_id} cancelled=True" in lines(out)  # it stopped cooperatively
    assert run["finished_at"]


def test_timeout_ends_a_run_that_ignores_nothing_but_runs_too_long(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "job": {
                "target": "tests.children.jobs:slow",
                "manual": True,
                "timeout": "500ms",
                "env": {"RUNS_FILE": str(out)},
            }
        }
    )
    d.wait_running_pid("job")
    run_id = d.client.call("run", name="job")["run_id"]
    wait_for(
        lambda: [r for r in runs_of(d, "job") if r["run_id"] == run_id and r["state"] == "timed_out"], what="timed_out"
    )


def _deaf_job(daemon_factory, out: Path, **keys: object) -> tuple[Daemon, int]:
    d: Daemon = daemon_factory(
        {
            "job": {
                "target": "tests.children.jobs:deaf",
                "manual": True,
                "cancel_grace": "1s",
                "env": {"RUNS_FILE": str(out)},
                **keys,
            }
        }
    )
    return d, d.wait_running_pid("job")


def _final(d: Daemon, run_id: str, state: str, timeout_s: float) -> dict[str, object]:
    found = wait_for(
        lambda: [r for r in runs_of(d, "job") if r["run_id"] == run_id and r["state"] == state],
        timeout_s=timeout_s,
        what=f"run {run_id} {state}",
    )
    return found[0]


def test_a_run_ignoring_its_timeout_is_killed_after_cancel_grace(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d, worker = _deaf_job(daemon_factory, out, timeout="1s")
    run_id = d.client.call("run", name="job")["run_id"]
    # timeout 1 s + cancel_grace 1 s + a moment; not + stop_timeout (10 s) of a graceful restart.
    run = _final(d, run_id, "timed_out", timeout_s=8)
    assert isinstance(run["duration_ms"], int) and run["duration_ms"] < 1000 + 1000 + 3000, run
    wait_for(lambda: not alive(worker), what="the worker that held the run to be killed")
    svc = d.service("job")
    assert svc["last_exit"]["signal"] == signal.SIGKILL
    assert svc["restarts"] == 0  # forced by the scheduler, not a failure for the restart policy
    d.wait_running_pid("job", not_pid=worker)  # a fresh warm worker takes the next runs


def test_a_cancel_of_a_run_ignoring_it_ends_the_run_after_cancel_grace(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d, worker = _deaf_job(daemon_factory, out)
    run_id = d.client.call("run", name="job")["run_id"]
    wait_for(lambda: any(line.startswith(f"start {run_id}") for line in lines(out)), what="the run to start")
    cancelled_at = time.monotonic()
    d.client.call("cancel", run_id=run_id)
    _final(d, run_id, "cancelled", timeout_s=8)
    assert time.monotonic() - cancelled_at < 1.0 + 4.0  # cancel_grace + a moment; not + stop_timeout (10 s)
    assert not alive(worker)


def test_failed_runs_are_retried_with_their_traceback_recorded(daemon_factory, short_dir: Path) -> None:
    d: Daemon = daemon_factory(
        {
            "job": {
                "target": "tests.children.jobs:fail",
                "manual": True,
                "retries": {"max": 2, "backoff": "fixed", "initial": "50ms"},
            }
        }
    )
    d.wait_running_pid("job")
    d.client.call("run", name="job")
    failed = wait_for(
        lambda: (f := runs_of(d, "job", state="failed")) and len(f) == 3 and f, what="three failed attempts"
    )
    assert sorted(r["attempt"] for r in failed) == [1, 2, 3]
    assert "RuntimeError: attempt 3 failed" in str(failed[0]["error"])
    assert d.service("job")["state"] == "RUNNING"  # a failed run does not take the worker down


def test_pause_stops_firing_and_resume_starts_again(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {"tick": {"target": "tests.children.jobs:record", "every": "200ms", "env": {"RUNS_FILE": str(out)}}}
    )
    wait_for(lambda: len(lines(out)) >= 1, what="a first run")
    assert "tick: PAUSED" not in d.cli("pause", "tick").stdout  # the worker keeps running; the schedule pauses
    assert d.service("tick")["schedule"]["paused"] is True
    settled = len(lines(out))
    # Paused: the next fire time is gone, so nothing can fire; check the recorded state, not the clock.
    assert d.service("tick")["schedule"]["next_fire"] is None
    d.cli("resume", "tick")
    wait_for(lambda: len(lines(out)) >= settled + 2, what="runs after resume")


def test_command_service_runs_once_per_occurrence_and_exit_status_is_the_outcome(
    daemon_factory, short_dir: Path
) -> None:
    out = short_dir / "cmd.txt"
    d: Daemon = daemon_factory(
        {
            "ok": {"command": ["sh", "-c", f'echo "$SUPERVISE_RUN_ID" >> {out}'], "every": "200ms"},
            "bad": {"command": ["sh", "-c", "exit 3"], "manual": True},
        }
    )
    wait_for(lambda: len(lines(out)) >= 2, what="two command runs")
    ok = wait_for(lambda: runs_of(d, "ok", state="succeeded"), what="succeeded command runs")
    assert ok[0]["run_id"] in lines(out) or ok[0]["run_id"] in "".join(lines(out))
    assert d.service("ok")["state"] in ("SCHEDULED", "RUNNING")
    d.client.call("run", name="bad")
    bad = wait_for(lambda: runs_of(d, "bad", state="failed"), what="a failed command run")
    assert bad[0]["exit_code"] == 3
    # status shows the run that just ended, without waiting for a read of the store
    last = d.service("bad")["schedule"]["last_run"]
    assert (last["run_id"], last["state"]) == (bad[0]["run_id"], "failed")


def test_a_one_shot_fires_within_a_second_of_its_datetime(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {"once": {"target": "tests.children.jobs:record", "manual": True, "env": {"RUNS_FILE": str(out)}}}
    )
    d.wait_running_pid("once")
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    d.cli("schedule", "once", "--at", at.isoformat(), "--args", '{"region": "later"}', check=True)
    wait_for(lambda: lines(out), timeout_s=10, what="the one-shot run")
    fired = float(lines(out)[0].split()[3])
    assert lines(out)[0].split()[1] == "later"
    assert at.timestamp() <= fired + 0.05
    assert fired - at.timestamp() < 1.0


def test_next_agrees_with_the_cron_expression(daemon_factory) -> None:
    d: Daemon = daemon_factory({"nightly": {"command": ["true"], "cron": "0 2 * * *", "timezone": "Asia/Kolkata"}})
    times = [datetime.fromisoformat(t) for t in d.client.call("next", name="nightly", count=3)["next"]]
    assert len(times) == 3
    for t in times:
        local = t.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Kolkata"))
        assert (local.hour, local.minute) == (2, 0)
    assert times[1] - times[0] == timedelta(days=1)


class _Hook(http.server.BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        _Hook.calls.append((self.path, self.headers.get("Authorization", ""), body))
        self.send_response(201)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_action_calls_a_local_server(daemon_factory, hook_server: str) -> None:
    _Hook.calls.clear()
    d: Daemon = daemon_factory(
        {
            "remind": {
                "action": "http",
                "url": f"{hook_server}/hook",
                "method": "POST",
                "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
                "body": '{"merchant": "ABC"}',
                "expect_status": [200, 299],
                "env": {"HOOK_TOKEN": "s3cret"},
            }
        }
    )
    d.wait_running_pid("remind")
    run_id = d.client.call("run", name="remind")["run_id"]
    run = wait_for(
        lambda: [r for r in runs_of(d, "remind") if r["run_id"] == run_id and r["state"] == "succeeded"],
        what="http run",
    )[0]
    assert _Hook.calls == [("/hook", "Bearer s3cret", '{"merchant": "ABC"}')]
    assert run["result"]["status"] == 201 and '"ok"' in run["result"]["body"]


def test_kill_9_of_the_supervisor_mid_run_marks_the_run_lost_after_restart(short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    config = write_config(
        short_dir, {"job": {"target": "tests.children.jobs:slow", "manual": True, "env": {"RUNS_FILE": str(out)}}}
    )
    d = start_daemon(config)
    try:
        d.wait_running_pid("job")
        run_id = d.client.call("run", name="job")["run_id"]
        wait_for(lambda: f"start {run_id}" in lines(out), what="the run to start")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        stop_daemon(d)
    d2 = start_daemon(config)
    try:
        runs = runs_of(d2, "job")
        (lost,) = [r for r in runs if r["run_id"] == run_id]
        assert lost["state"] == "lost" and "supervisor stopped" in str(lost["reason"])
        assert d2.cli("runs", "job", "--json").returncode == 0
        assert json.loads(d2.cli("runs", "job", "--json").stdout)["runs"][0]["run_id"] == run_id
    finally:
        stop_daemon(d2)


def test_a_registered_job_runs_by_name_with_stored_arguments(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "settle": {
                "target": "tests.children.jobs@settle-merchants",
                "manual": True,
                "args": {"merchant": "ABC"},
                "env": {"RUNS_FILE": str(out)},
            }
        }
    )
    d.wait_running_pid("settle")
    d.client.call("run", name="settle")
    wait_for(lambda: runs_of(d, "settle", state="succeeded"), what="the first settlement")
    d.client.call("run", name="settle", args={"merchant": "XYZ"})  # the run's args override the stored ones
    wait_for(lambda: sorted(lines(out)) == ["settled ABC", "settled XYZ"], what="both settlements")


def test_a_service_class_keeps_its_state_across_runs(daemon_factory) -> None:
    d: Daemon = daemon_factory({"counter": {"target": "tests.children.jobs:Counter", "manual": True}})
    d.wait_running_pid("counter")
    for _ in range(3):
        run_id = d.client.call("run", name="counter")["run_id"]
        wait_for(
            lambda run_id=run_id: [r for r in runs_of(d, "counter", state="succeeded") if r["run_id"] == run_id],
            what="run done",
        )
    results = sorted(r["result"] for r in runs_of(d, "counter", state="succeeded"))
    assert results == [1, 2, 3]


def test_isolation_process_runs_each_run_in_a_fresh_process(daemon_factory, short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    d: Daemon = daemon_factory(
        {
            "iso": {
                "target": "tests.children.jobs:record",
                "every": "300ms",
                "isolation": "process",
                "args": {"region": "iso"},
                "env": {"RUNS_FILE": str(out)},
            }
        }
    )
    wait_for(lambda: len(lines(out)) >= 2, what="two isolated runs")
    done = wait_for(
        lambda: len(runs_of(d, "iso", state="succeeded")) >= 2 and runs_of(d, "iso", state="succeeded"),
        what="succeeded",
    )
    assert len({r["pid"] for r in done}) == len(done)  # a new process each time
    assert all(line.split()[1] == "iso" for line in lines(out))
    assert d.service("iso")["state"] in ("SCHEDULED", "RUNNING")


def test_on_start_runs_once_per_supervisor_start(short_dir: Path) -> None:
    out = short_dir / "runs.txt"
    config = write_config(
        short_dir, {"boot": {"target": "tests.children.jobs:record", "on_start": True, "env": {"RUNS_FILE": str(out)}}}
    )
    for expected in (1, 2):
        d = start_daemon(config)
        try:
            wait_for(
                lambda d=d, expected=expected: len(runs_of(d, "boot", state="succeeded")) == expected,
                what=f"{expected} on-start runs",
            )
            assert d.service("boot")["schedule"]["next_fire"] is None
        finally:
            stop_daemon(d)
    assert len(lines(out)) == 2


def test_two_supervisors_sharing_a_postgresql_store_run_each_occurrence_once(short_dir: Path) -> None:
    import uuid

    from tests.contract.conftest import drop_schema, postgres_dsn

    dsn = postgres_dsn()
    schema = f"supervise_test_{uuid.uuid4().hex[:12]}"
    out = short_dir / "runs.txt"
    job = {"target": "tests.children.jobs:record", "every": "500ms", "env": {"RUNS_FILE": str(out)}}
    daemons = []
    try:
        for host in ("a", "b"):
            folder = short_dir / host
            folder.mkdir()
            daemons.append(start_daemon(write_config(folder, {"shared": job}, store=f"{dsn}?schema={schema}")))
        wait_for(lambda: len(lines(out)) >= 6, timeout_s=20, what="six runs across both hosts")
        nominal = [line.split()[4] for line in lines(out)]
        assert len(nominal) == len(set(nominal))  # no occurrence ran twice
        pids = {d.service("shared")["pid"] for d in daemons}
        assert len(pids) == 2
    finally:
        for d in daemons:
            stop_daemon(d)
        drop_schema(dsn, schema)
