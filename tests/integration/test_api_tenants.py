"""`supervise tenant create|list|export|delete` against a real daemon, running and stopped, with real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervise.supervisor.api.store import ApiStore, Role
from supervise.supervisor.store import open_store
from tests.conftest import REPO, start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import Answer, Receiver, call
from tests.integration.test_api import make_tokens

TOKENS = {
    "admin": (Role.ADMIN, None),
    "acme-admin": (Role.ADMIN, "acme"),
    "acme-operator": (Role.OPERATOR, "acme"),
    "globex-operator": (Role.OPERATOR, "globex"),
}


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_tenant_is_exported_and_deleted_alone_while_the_daemon_runs_and_while_it_is_stopped(
    short_dir: Path, receiver: Receiver
) -> None:
    config = write_config(short_dir, {}, http="127.0.0.1:0", allow_addresses=["127.0.0.1"])
    tokens = make_tokens(short_dir / "state", TOKENS)
    assert cli(config, "tenant", "create", "initech").returncode == 0
    assert "exists" in cli(config, "tenant", "create", "initech").stderr
    daemon = start_daemon(config)
    try:
        base = "http://" + daemon.client.call("ping")["http"] + "/api/v1"

        def api(method: str, path: str, who: str, **kwargs: Any) -> Answer:
            return call(method, base + path, token=tokens[who], **kwargs)

        def task_done(task_id: str, who: str) -> None:
            wait_for(
                lambda: api("GET", f"/tasks/{task_id}", who).json["state"] == "succeeded",
                timeout_s=30,
                what=f"task {task_id}",
                interval_s=0.1,
            )

        # Given: acme has a job that ran, a task that ran and one waiting (with a webhook secret); globex a task
        job = {
            "name": "acme-report",
            "target": "tests.children.jobs@settle-merchants",
            "manual": True,
            "args": {"merchant": "M1"},
            "env": {"RUNS_FILE": str(short_dir / "runs.txt"), "PYTHONPATH": str(REPO)},
        }
        assert api("POST", "/jobs", "acme-admin", body=job).status == 201
        run_id = api("POST", "/jobs/acme-report/run", "acme-operator", body={}).json["run_id"]
        wait_for(
            lambda: api("GET", f"/runs/{run_id}", "acme-operator").json["state"] == "succeeded",
            timeout_s=30,
            what="the job's run",
        )
        ran = api("POST", "/tasks", "acme-operator", body={"url": receiver.url}).json["id"]
        hook = {"url": receiver.url + "/hook", "secret": "acme-webhook-secret-1"}
        later = {"url": receiver.url, "at": "2099-01-01T00:00:00+00:00", "notify": {"webhook": hook}}
        waiting = api("POST", "/tasks", "acme-operator", body=later).json["id"]
        other = api("POST", "/tasks", "globex-operator", body={"url": receiver.url}).json["id"]
        task_done(ran, "acme-operator")
        task_done(other, "globex-operator")

        listed = json.loads(cli(config, "tenant", "list", "--json").stdout)
        assert [(t["name"], t["tokens"], t["tasks"]) for t in listed] == [
            ("acme", 2, 2),
            ("globex", 1, 1),
            ("initech", 0, 0),
        ]

        # When: acme is exported
        out = short_dir / "acme.json"
        exported = cli(config, "tenant", "export", "acme", "-o", str(out))
        assert exported.returncode == 0, exported.stderr
        assert out.stat().st_mode & 0o777 == 0o600
        doc = json.loads(out.read_text())
        assert (doc["format"], doc["version"], doc["tenant"]) == ("supervise.tenant-export", 1, "acme")
        assert sorted(t["name"] for t in doc["tokens"]) == ["acme-admin", "acme-operator"]
        assert {s["name"] for s in doc["services"]} == {"acme-report", "api-tasks-acme-r0"}
        assert all(s["registration"] is not None for s in doc["services"])
        assert {t["id"] for t in doc["tasks"]} == {ran, waiting}
        stored = next(t for t in doc["tasks"] if t["id"] == waiting)["request"]["notify"]["webhook"]
        assert stored == {**hook, "headers": {}}
        run_ids = {r["run_id"] for r in doc["runs"]}
        assert run_id in run_ids and len(doc["runs"]) >= 3  # the job's run, the task's run, the waiting one
        assert all(r["service"] in ("acme-report", "api-tasks-acme-r0") for r in doc["runs"])
        assert doc["audit"] and all(e["tenant"] == "acme" for e in doc["audit"])
        assert "globex" not in out.read_text() and other not in out.read_text()

        # When: acme is deleted while the daemon runs
        deleted = cli(config, "tenant", "delete", "acme", "--yes", "--json")
        assert deleted.returncode == 0, deleted.stderr
        counts = json.loads(deleted.stdout)
        assert counts["services"] == 2 and counts["tasks"] == 2 and counts["tokens"] == 2 and counts["runs"] >= 3
        # Then: its tokens are refused, its objects are gone, globex is untouched
        assert api("GET", "/tasks", "acme-operator").status == 401
        assert api("GET", "/jobs/acme-report", "admin").status == 404
        assert api("GET", f"/tasks/{ran}", "admin").status == 404
        assert api("GET", f"/runs/{run_id}", "admin").status == 404
        assert api("GET", f"/tasks/{other}", "globex-operator").json["state"] == "succeeded"
        assert all(s["name"].startswith("api-tasks-globex") for s in daemon.client.call("status")["services"])
        assert "no tenant" in cli(config, "tenant", "export", "acme").stderr
    finally:
        stop_daemon(daemon)

    # When: globex is deleted while no daemon runs
    deleted = cli(config, "tenant", "delete", "globex", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["tasks"] == 1
    store = ApiStore(short_dir / "state")
    try:
        assert [t["name"] for t in store.tenants()] == ["initech"]
        assert [t.name for t in store.tokens()] == ["admin"]
    finally:
        store.close()
    history = open_store(short_dir / "state" / "history.db")
    with history:
        assert history.list_runs(limit=1000) == []
        assert history.list_registrations() == {}
    again = start_daemon(config)  # nothing of either tenant comes back
    try:
        assert again.client.call("status")["services"] == []
    finally:
        stop_daemon(again)
