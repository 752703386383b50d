"""The HTTP API against a real daemon, through a real HTTP client (aiohttp): every resource, role and tenant rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervise.supervisor.api.store import ApiStore, Role
from tests.conftest import REPO, Daemon, start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import Answer, Receiver, call, read_sse, start_receiver

FOREVER = "tests.children.targets:forever"
QUOTA = 4

TOKENS = {
    "admin": (Role.ADMIN, None),
    "operator": (Role.OPERATOR, None),
    "viewer": (Role.VIEWER, None),
    "acme-admin": (Role.ADMIN, "acme"),
    "acme-operator": (Role.OPERATOR, "acme"),
    "acme-viewer": (Role.VIEWER, "acme"),
    "globex-admin": (Role.ADMIN, "globex"),
    "globex-operator": (Role.OPERATOR, "globex"),
    "quota-operator": (Role.OPERATOR, "quota"),
}


@dataclass
class Api:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    receiver: Receiver
    folder: Path

    def url(self, path: str) -> str:
        return f"{self.base}/api/v1{path}"

    def call(self, method: str, path: str, who: str | None = "admin", **kwargs: Any) -> Answer:
        token = self.tokens[who] if who is not None else None
        return call(method, self.url(path), token=token, **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervise.supervisor", *args, "-c", str(self.daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )


def make_tokens(state_dir: Path, spec: dict[str, tuple[Role, str | None]]) -> dict[str, str]:
    store = ApiStore(state_dir)
    try:
        return {name: store.create_token(name, role, tenant, None)[0] for name, (role, tenant) in spec.items()}
    finally:
        store.close()


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    folder = Path(tempfile.mkdtemp(prefix="sv-api-", dir="/tmp"))
    services = {
        "web": {"target": FOREVER},
        "nightly": {"command": ["true"], "cron": "0 2 * * *", "timezone": "Asia/Kolkata"},
    }
    # the receiver is on loopback: tasks may call it (the address policy refuses private addresses otherwise)
    config = write_config(
        folder, services, http="127.0.0.1:0", tenant_max_pending_tasks=QUOTA, allow_addresses=["127.0.0.1"]
    )
    tokens = make_tokens(folder / "state", TOKENS)
    receiver = start_receiver()
    daemon = start_daemon(config)
    try:
        base = "http://" + daemon.client.call("ping")["http"]
        yield Api(daemon, base, tokens, receiver, folder)
    finally:
        stop_daemon(daemon)
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)


def problem(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json
    assert body["status"] == status and body["title"]
    return body


def pointers(answer: Answer) -> dict[str, str]:
    return {e["pointer"]: e["detail"] for e in problem(answer, 422)["errors"]}


def in_an_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def wait_run(api: Api, run_id: str, states: set[str], who: str = "admin") -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        answer = api.call("GET", f"/runs/{run_id}", who)
        return answer.json if answer.status == 200 and answer.json["state"] in states else None

    return wait_for(done, timeout_s=30, what=f"run {run_id} in {states}", interval_s=0.1)


# -- the document and authentication -----------------------------------------------------------------


def test_openapi_document_is_generated_from_the_models_and_served_without_a_token(api: Api) -> None:
    answer = call("GET", api.url("/openapi.json"))
    assert answer.status == 200
    doc = answer.json
    assert doc["openapi"] == "3.1.0"
    create_task = doc["paths"]["/api/v1/tasks"]["post"]
    assert create_task["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskCreate"
    }
    assert "201" in create_task["responses"] and "422" in create_task["responses"]
    schema = doc["components"]["schemas"]["TaskCreate"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["at"]["anyOf"][0]["format"] == "date-time"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"/api/v1/services", "/api/v1/jobs", "/api/v1/runs", "/api/v1/tasks", "/api/v1/events"} <= set(doc["paths"])


def test_no_token_is_401_with_a_bearer_challenge(api: Api) -> None:
    answer = api.call("GET", "/services", who=None)
    problem(answer, 401)
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_wrong_or_expired_token_is_401_invalid_token(api: Api) -> None:
    wrong = call("GET", api.url("/services"), token="svt_000000000000_" + "A" * 43)
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    problem(wrong, 401)
    store = ApiStore(api.folder / "state")
    try:
        expired, _ = store.create_token("expired", Role.ADMIN, None, timedelta(seconds=-1))
    finally:
        store.close()
    problem(call("GET", api.url("/services"), token=expired), 401)
    problem(call("GET", api.url("/services"), token=api.tokens["admin"][:-1] + "x"), 401)
    problem(call("GET", api.url("/services"), token="not-even-the-format"), 401)


def test_a_token_in_the_query_string_is_refused_even_with_a_good_header(api: Api) -> None:
    answer = api.call("GET", f"/services?access_token={api.tokens['admin']}")
    assert "Authorization: Bearer" in problem(answer, 400)["detail"]


def test_token_cli_prints_the_token_once_lists_without_secrets_and_revokes(api: Api) -> None:
    created = api.cli("token", "create", "cli-made", "--role", "viewer", "--tenant", "acme", "--expires", "90d")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("svt_") and "not stored" in created.stderr
    assert call("GET", api.url("/services"), token=token).status == 200
    listed = api.cli("token", "list", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["cli-made"]["role"] == "viewer" and rows["cli-made"]["tenant"] == "acme"
    assert rows["cli-made"]["expires_at"] is not None
    assert token[17:] not in listed.stdout
    assert token[17:] not in (api.folder / "state" / "api.db").read_bytes().decode(errors="replace")
    assert oct((api.folder / "state" / "api.db").stat().st_mode & 0o777) == "0o600"
    assert api.cli("token", "revoke", "cli-made").returncode == 0
    problem(call("GET", api.url("/services"), token=token), 401)
    refused = api.cli("token", "create", "x", "--role", "root")
    assert refused.returncode != 0 and "root" in refused.stderr


# -- roles ---------------------------------------------------------------------------------------------


def test_roles_viewer_reads_operator_acts_admin_manages(api: Api) -> None:
    assert api.call("GET", "/services", "viewer").status == 200
    body = problem(api.call("POST", "/services/web/restart", "viewer"), 403)
    assert "operator" in body["detail"]
    problem(api.call("POST", "/tasks", "viewer", body={"url": api.receiver.url, "at": in_an_hour()}), 403)
    assert api.call("POST", "/services/web/pause", "operator").status == 200
    assert api.call("POST", "/services/web/resume", "operator").status == 200
    spec = {"name": "by-operator", "spec": {"command": ["sleep", "60"]}}
    problem(api.call("POST", "/services", "operator", body=spec), 403)
    problem(api.call("POST", "/jobs", "operator", body={"name": "j", "command": ["true"], "every": "1h"}), 403)
    problem(api.call("DELETE", "/jobs/nightly", "operator"), 403)


# -- services ------------------------------------------------------------------------------------------


def test_services_add_act_scale_logs_update_and_remove(api: Api) -> None:
    made = api.call("POST", "/services", body={"name": "made", "spec": {"target": FOREVER, "cwd": str(REPO)}})
    assert made.status == 201, made.text
    assert made.headers["Location"] == "/api/v1/services/made"
    wait_for(lambda: api.call("GET", "/services/made").json["services"][0]["state"] == "RUNNING", what="made RUNNING")
    stopped = api.call("POST", "/services/made/stop")
    assert stopped.json == {"services": {"made": "STOPPED"}}
    assert api.call("POST", "/services/made/start").json == {"services": {"made": "RUNNING"}}
    assert api.call("POST", "/services/made/restart").json == {"services": {"made": "RUNNING"}}
    logs = wait_for(lambda: (a := api.call("GET", "/services/made/logs?lines=5")).json["lines"] and a, what="log lines")
    assert any("forever started" in line for line in logs.json["lines"])
    assert api.call("POST", "/services/made/scale", body={"processes": 2}).status == 200
    names = [s["name"] for s in api.call("GET", "/services/made").json["services"]]
    assert names == ["made", "made:1"]
    problem(api.call("POST", "/services/made/scale", body={"processes": 0}), 422)
    updated = api.call("PUT", "/services/made", body={"spec": {"target": FOREVER, "cwd": str(REPO), "processes": 1}})
    assert updated.status == 200, updated.text
    assert api.call("DELETE", "/services/made").status == 200
    problem(api.call("GET", "/services/made"), 404)
    listed = [s["name"] for s in api.call("GET", "/services").json["services"]]
    assert "web" in listed and "made" not in listed


def test_service_errors_name_the_key_and_change_nothing(api: Api) -> None:
    before = api.call("GET", "/services").json
    bad = api.call(
        "POST", "/services", body={"name": "bad", "spec": {"command": ["sleep", "1"], "restart": "sometimes"}}
    )
    assert "/spec/restart" in pointers(bad)
    problem(api.call("POST", "/services", body={"name": "web", "spec": {"command": ["true"]}}), 409)
    traversal = api.call("POST", "/services", body={"name": "../etc", "spec": {"command": ["true"]}})
    assert "/name" in pointers(traversal)
    problem(api.call("GET", "/services/..%2F..%2Fetc"), 404)
    problem(api.call("POST", "/services/nope/start"), 404)
    reserved = api.call("POST", "/services", body={"name": "api-tasks-x", "spec": {"command": ["true"]}})
    assert "/name" in pointers(reserved)
    after = api.call("GET", "/services").json
    assert [s["name"] for s in after["services"]] == [s["name"] for s in before["services"]]


# -- jobs ----------------------------------------------------------------------------------------------


def test_jobs_create_patch_run_skip_pause_resume_delete(api: Api) -> None:
    created = api.call("POST", "/jobs", body={"name": "tick", "command": ["true"], "every": "1h", "args": {"a": 1}})
    assert created.status == 201, created.text
    assert created.json["trigger"].startswith("every 1h") and created.headers["Location"] == "/api/v1/jobs/tick"
    patched = api.call("PATCH", "/jobs/tick", body={"cron": "0 2 * * *", "timezone": "Asia/Kolkata"})
    assert patched.status == 200, patched.text
    assert "Asia/Kolkata" in patched.json["trigger"]
    next_fire = datetime.fromisoformat(patched.json["next_fire"])
    assert next_fire.astimezone(UTC).strftime("%H:%M") == "20:30"  # 02:00 in Kolkata
    assert patched.json["spec"] == {
        "command": ["true"],
        "cron": "0 2 * * *",
        "timezone": "Asia/Kolkata",
        "args": {"a": 1},
    }
    started = api.call("POST", "/jobs/tick/run", body={"args": {"b": 2}})
    assert started.status == 202, started.text
    run = wait_run(api, started.json["run_id"], {"succeeded"})
    assert run["service"] == "tick" and run["origin"] == "manual"
    skipping = api.call("POST", "/jobs/tick/skip")
    assert skipping.json["skipping"] == patched.json["next_fire"]
    assert api.call("POST", "/jobs/tick/pause", "operator").json["paused"] is True
    assert api.call("POST", "/jobs/tick/resume", "operator").json["paused"] is False
    assert "tick" in [j["name"] for j in api.call("GET", "/jobs", "viewer").json["jobs"]]
    assert api.call("DELETE", "/jobs/tick").status == 200
    problem(api.call("GET", "/jobs/tick"), 404)
    problem(api.call("GET", "/jobs/web"), 404)  # a service, not a job


def test_a_job_from_the_config_file_is_changed_in_the_file_not_through_patch(api: Api) -> None:
    job = api.call("GET", "/jobs/nightly").json
    assert job["spec"] is None and "Asia/Kolkata" in job["trigger"]
    assert "config file" in problem(api.call("PATCH", "/jobs/nightly", body={"every": "1h"}), 409)["detail"]


def test_job_bad_input_is_422_with_field_paths(api: Api) -> None:
    def bad(body: dict[str, Any]) -> dict[str, str]:
        return pointers(api.call("POST", "/jobs", body=body))

    assert (
        "timezone" in bad({"name": "j", "command": ["true"], "every": "1h", "start": "2026-12-01T09:00:00"})["/start"]
    )
    assert "never fires" in " ".join(bad({"name": "j", "command": ["true"], "cron": "0 0 31 2 *"}).values())
    assert bad({"name": "j", "command": ["true"], "every": "1h", "colour": "red"})["/colour"] == "unknown field"
    assert "/every" in bad({"name": "j", "command": ["true"], "every": 5})
    assert "exactly one of command" in " ".join(
        bad({"name": "j", "command": ["true"], "target": "a:b", "every": "1h"}).values()
    )
    assert "/retries/max" in bad({"name": "j", "command": ["true"], "every": "1h", "retries": {"max": -1}})
    assert "/name" in bad({"name": "J!", "command": ["true"], "every": "1h"})
    problem(api.call("GET", "/jobs/j"), 404)


# -- runs ----------------------------------------------------------------------------------------------


def test_runs_filter_by_job_and_state_page_with_a_cursor_cancel_and_retry(api: Api) -> None:
    assert api.call("POST", "/jobs", body={"name": "paged", "command": ["true"], "manual": True}).status == 201
    ids = []
    for _ in range(5):
        ids.append(api.call("POST", "/jobs/paged/run", "operator", body={}).json["run_id"])
        wait_run(api, ids[-1], {"succeeded"})
    seen: list[str] = []
    path = "/runs?job=paged&limit=2"
    while True:
        page = api.call("GET", path, "viewer").json
        assert len(page["runs"]) <= 2
        seen += [r["run_id"] for r in page["runs"]]
        if page["next_cursor"] is None:
            break
        path = f"/runs?job=paged&limit=2&cursor={page['next_cursor']}"
    assert seen == list(reversed(ids))
    assert len(api.call("GET", "/runs?job=paged&state=succeeded&limit=10").json["runs"]) == 5
    assert api.call("GET", "/runs?job=paged&state=failed").json["runs"] == []
    assert "/state" in " ".join(pointers(api.call("GET", "/runs?state=bogus")))
    assert "timezone" in " ".join(pointers(api.call("GET", "/runs?since=2026-01-01T00:00:00")).values())
    problem(api.call("GET", "/runs?cursor=garbage!"), 422)
    problem(api.call("GET", "/runs?job=nope"), 404)

    assert api.call("POST", "/jobs", body={"name": "slow", "command": ["sleep", "30"], "manual": True}).status == 201
    slow = api.call("POST", "/jobs/slow/run", "operator", body={}).json["run_id"]
    wait_run(api, slow, {"running"})
    assert api.call("POST", f"/runs/{slow}/cancel", "operator").status == 200
    wait_run(api, slow, {"cancelled"})
    problem(api.call("POST", f"/runs/{slow}/cancel", "operator"), 409)

    assert api.call("POST", "/jobs", body={"name": "flaky", "command": ["false"], "manual": True}).status == 201
    failed = api.call("POST", "/jobs/flaky/run", "operator", body={}).json["run_id"]
    wait_run(api, failed, {"failed"})
    again = api.call("POST", f"/runs/{failed}/retry", "operator")
    assert again.status == 202 and again.json["run_id"] != failed
    problem(api.call("POST", f"/runs/{ids[0]}/retry", "operator"), 409)  # succeeded: nothing to retry
    problem(api.call("GET", "/runs/" + "0" * 32), 404)
    for name in ("paged", "slow", "flaky"):
        assert api.call("DELETE", f"/jobs/{name}").status == 200


# -- tasks ---------------------------------------------------------------------------------------------


def test_a_task_calls_its_url_at_its_time_with_its_body_and_headers(api: Api) -> None:
    at = datetime.now(UTC) + timedelta(seconds=1)
    body = {
        "url": f"{api.receiver.url}/hook?x=1",
        "method": "PUT",
        "headers": {"X-Trace": "abc"},
        "body": {"order": 42},
        "at": at.isoformat(),
    }
    created = api.call("POST", "/tasks", "operator", body=body)
    assert created.status == 201, created.text
    task = created.json
    assert created.headers["Location"] == f"/api/v1/tasks/{task['id']}"
    assert task["state"] == "scheduled"
    done = wait_for(
        lambda: (t := api.call("GET", f"/tasks/{task['id']}", "viewer").json)["state"] == "succeeded" and t,
        timeout_s=30,
        what="the task to succeed",
        interval_s=0.1,
    )
    assert done["result"] == {"status": 200, "body": "received"} and done["attempts"] == 1
    got = [r for r in api.receiver.requests if r["headers"].get("X-Supervise-Task") == task["id"]]
    assert len(got) == 1
    assert got[0]["method"] == "PUT" and got[0]["path"] == "/hook?x=1"
    assert json.loads(got[0]["body"]) == {"order": 42}
    assert got[0]["headers"]["X-Trace"] == "abc" and got[0]["headers"]["Content-Type"] == "application/json"
    started = datetime.fromisoformat(done["run"]["started_at"])
    assert started >= at - timedelta(milliseconds=5)
    assert task["id"] in [t["id"] for t in api.call("GET", "/tasks").json["tasks"]]


def test_a_task_at_a_past_time_runs_now_and_a_failing_call_is_failed(api: Api) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    created = api.call("POST", "/tasks", "operator", body={"url": f"{api.receiver.url}/fail", "at": past})
    assert created.status == 201
    done = wait_for(
        lambda: (t := api.call("GET", f"/tasks/{created.json['id']}").json)["state"] == "failed" and t,
        timeout_s=30,
        what="the task to fail",
        interval_s=0.1,
    )
    assert "answered 500" in done["error"]


def test_a_failing_task_is_retried_and_shows_retry_wait_between_attempts(api: Api) -> None:
    body = {"url": f"{api.receiver.url}/fail/retried", "retries": {"max": 1}}
    task = api.call("POST", "/tasks", "operator", body=body).json
    states: list[str] = []

    def final() -> dict[str, Any] | None:
        seen = api.call("GET", f"/tasks/{task['id']}").json
        states.append(seen["state"])
        return seen if seen["state"] == "failed" else None

    done = wait_for(final, timeout_s=30, what="both attempts to fail", interval_s=0.05)
    assert done["attempts"] == 2 and done["run"]["attempt"] == 2 and done["run"]["origin"] == "retry"
    assert "retry_wait" in states
    calls = [r for r in api.receiver.requests if r["headers"].get("X-Supervise-Task") == task["id"]]
    assert len(calls) == 2


def test_deleting_a_task_cancels_it_if_it_has_not_run(api: Api) -> None:
    created = api.call("POST", "/tasks", "operator", body={"url": api.receiver.url, "at": in_an_hour()}).json
    deleted = api.call("DELETE", f"/tasks/{created['id']}", "operator")
    assert deleted.status == 200 and deleted.json["state"] == "cancelled"
    assert api.call("GET", f"/tasks/{created['id']}").json["state"] == "cancelled"
    assert api.call("DELETE", f"/tasks/{created['id']}", "operator").json["state"] == "cancelled"
    ran = api.call("POST", "/tasks", "operator", body={"url": api.receiver.url}).json
    wait_for(lambda: api.call("GET", f"/tasks/{ran['id']}").json["state"] == "succeeded", timeout_s=30, what="run")
    problem(api.call("DELETE", f"/tasks/{ran['id']}", "operator"), 409)
    problem(api.call("GET", "/tasks/" + "f" * 32), 404)


def test_task_bad_input_is_refused_and_nothing_is_stored(api: Api) -> None:
    before = len(api.call("GET", "/tasks?limit=500").json["tasks"])
    url = api.receiver.url

    def bad(body: dict[str, Any]) -> dict[str, str]:
        return pointers(api.call("POST", "/tasks", "operator", body=body))

    assert "scheme" in bad({"url": "ftp://example.com/x"})["/url"]
    assert "scheme" in bad({"url": "file:///etc/passwd"})["/url"]
    assert "own API" in bad({"url": f"{api.base}/api/v1/tasks"})["/url"]
    assert "own API" in bad({"url": api.base.replace("127.0.0.1", "localhost") + "/x"})["/url"]
    assert "timezone" in bad({"url": url, "at": "2030-01-01T00:00:00"})["/at"]
    assert "/headers" in bad({"url": url, "headers": {"X-A": "b\r\nInjected: 1"}})
    assert "/headers" in bad({"url": url, "headers": {"Bad Name": "x"}})
    assert "/headers" in bad({"url": url, "headers": {"Host": "evil"}})
    assert "/url" in bad({"url": "http://exa mple.com/"})
    assert bad({"url": url, "colour": "red"})["/colour"] == "unknown field"
    assert "/timeout" in bad({"url": url, "timeout": "soon"})
    assert "/retries/max" in bad({"url": url, "retries": {"max": -1}})
    assert "/method" in bad({"url": url, "method": "TRACE"})
    assert "/url" in bad({})
    problem(api.call("POST", "/tasks", "operator", raw=b'{"url": '), 400)
    problem(api.call("POST", "/tasks", "operator", raw=b"[1, 2"), 400)
    problem(api.call("POST", "/tasks", "operator", raw=b"url=x", headers={"Content-Type": "text/plain"}), 415)
    huge = {"url": url, "body": "x" * (1024 * 1024 + 10)}
    problem(api.call("POST", "/tasks", "operator", body=huge), 413)
    assert len(api.call("GET", "/tasks?limit=500").json["tasks"]) == before
    assert call("GET", f"{api.base}/health/live").status == 200


def test_idempotency_key_returns_the_first_answer_and_refuses_another_body(api: Api) -> None:
    body = {"url": api.receiver.url, "at": in_an_hour()}
    first = api.call("POST", "/tasks", "operator", body=body, headers={"Idempotency-Key": "order-7"})
    again = api.call("POST", "/tasks", "operator", body=body, headers={"Idempotency-Key": "order-7"})
    assert first.status == again.status == 201
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    other = api.call(
        "POST", "/tasks", "operator", body={**body, "method": "GET"}, headers={"Idempotency-Key": "order-7"}
    )
    assert "Idempotency-Key" in problem(other, 409)["detail"]
    ids = [t["id"] for t in api.call("GET", "/tasks?limit=500").json["tasks"]]
    assert ids.count(first.json["id"]) == 1
    api.call("DELETE", f"/tasks/{first.json['id']}", "operator")


# -- tenants -------------------------------------------------------------------------------------------


def test_tenants_see_only_their_own_objects_and_others_answer_404(api: Api) -> None:
    task = api.call("POST", "/tasks", "acme-operator", body={"url": api.receiver.url, "at": in_an_hour()}).json
    assert task["tenant"] == "acme"
    problem(api.call("GET", f"/tasks/{task['id']}", "globex-operator"), 404)
    problem(api.call("DELETE", f"/tasks/{task['id']}", "globex-operator"), 404)
    assert task["id"] not in [t["id"] for t in api.call("GET", "/tasks", "globex-operator").json["tasks"]]
    assert task["id"] in [t["id"] for t in api.call("GET", "/tasks", "acme-viewer").json["tasks"]]
    assert task["id"] in [t["id"] for t in api.call("GET", "/tasks").json["tasks"]]  # tenant-less admin: everything

    registered = {
        "name": "acme-report",
        "target": "tests.children.jobs@settle-merchants",
        "manual": True,
        "args": {"merchant": "M1"},
        "env": {"RUNS_FILE": str(api.folder / "acme-runs.txt"), "PYTHONPATH": str(REPO)},
    }
    commanded = {k: v for k, v in registered.items() if k != "target"} | {"command": ["sh", "-c", "id"]}
    assert "/command" in problem(api.call("POST", "/jobs", "acme-admin", body=commanded), 403)["detail"]
    anything = {**registered, "target": "os:system"}
    assert "/target" in problem(api.call("POST", "/jobs", "acme-admin", body=anything), 403)["detail"]
    spec = {"target": "tests.children.jobs@settle-merchants", "manual": True}
    for key, value in (("user", "root"), ("cwd", "/"), ("requires", ["web"])):
        refused = api.call("POST", "/services", "acme-admin", body={"name": "acme-x", "spec": {**spec, key: value}})
        assert f"/spec/{key}" in problem(refused, 403)["detail"]
    job = api.call("POST", "/jobs", "acme-admin", body=registered)
    assert job.status == 201 and job.json["tenant"] == "acme", job.text
    run_id = api.call("POST", "/jobs/acme-report/run", "acme-operator", body={}).json["run_id"]
    wait_run(api, run_id, {"succeeded"}, who="acme-viewer")
    for path in ("/jobs/acme-report", "/services/acme-report", f"/runs/{run_id}", "/runs?job=acme-report"):
        problem(api.call("GET", path, "globex-admin"), 404)
    problem(api.call("POST", "/jobs/acme-report/run", "globex-operator", body={}), 404)
    problem(api.call("DELETE", "/jobs/acme-report", "globex-admin"), 404)
    problem(api.call("POST", f"/runs/{run_id}/cancel", "globex-operator"), 404)
    globex_services = [s["name"] for s in api.call("GET", "/services", "globex-admin").json["services"]]
    assert "acme-report" not in globex_services and "web" not in globex_services
    acme_services = {s["name"]: s["tenant"] for s in api.call("GET", "/services", "acme-viewer").json["services"]}
    assert acme_services.get("acme-report") == "acme" and "web" not in acme_services
    problem(api.call("POST", "/services/web/stop", "acme-operator"), 404)  # the config's services are not a tenant's
    assert [r["run_id"] for r in api.call("GET", "/runs", "globex-admin").json["runs"]] == []
    acme_runs = [r["run_id"] for r in api.call("GET", "/runs", "acme-viewer").json["runs"]]
    assert run_id in acme_runs
    all_services = {s["name"]: s["tenant"] for s in api.call("GET", "/services").json["services"]}
    assert all_services["acme-report"] == "acme" and all_services["web"] is None

    events = read_sse(api.url("/events?since=0&follow=false"), token=api.tokens["globex-admin"])
    assert all(e["data"]["service"] != "acme-report" for e in events)
    acme_events = read_sse(api.url("/events?since=0&follow=false"), token=api.tokens["acme-viewer"])
    assert acme_events and all(e["data"]["service"].startswith(("acme-", "api-tasks-acme-")) for e in acme_events)
    api.call("DELETE", f"/tasks/{task['id']}", "acme-operator")
    api.call("DELETE", "/jobs/acme-report", "acme-admin")


def test_a_tenant_over_its_pending_task_quota_gets_429_with_retry_after(api: Api) -> None:
    made = []
    for _ in range(QUOTA):
        answer = api.call("POST", "/tasks", "quota-operator", body={"url": api.receiver.url, "at": in_an_hour()})
        assert answer.status == 201, answer.text
        made.append(answer.json["id"])
    over = api.call("POST", "/tasks", "quota-operator", body={"url": api.receiver.url, "at": in_an_hour()})
    assert "quota" in problem(over, 429)["detail"]
    assert int(over.headers["Retry-After"]) > 0
    assert api.call("POST", "/tasks", "acme-operator", body={"url": api.receiver.url, "at": in_an_hour()}).status == 201
    api.call("DELETE", f"/tasks/{made[0]}", "quota-operator")
    assert wait_for(
        lambda: (
            api.call("POST", "/tasks", "quota-operator", body={"url": api.receiver.url, "at": in_an_hour()}).status
            == 201
        ),
        what="a slot after a cancel",
    )


# -- events and audit ----------------------------------------------------------------------------------


def test_events_stream_follows_and_resumes_after_last_event_id(api: Api) -> None:
    kept = read_sse(api.url("/events?since=0&follow=false&service=web"), token=api.tokens["viewer"])
    assert kept and all(e["data"]["service"] == "web" for e in kept)
    seqs = [e["data"]["seq"] for e in kept]
    assert seqs == sorted(seqs)
    middle = kept[len(kept) // 2]
    resumed = read_sse(
        api.url("/events?follow=false&service=web"), token=api.tokens["viewer"], headers={"Last-Event-ID": middle["id"]}
    )
    assert [e["data"]["seq"] for e in resumed] == [s for s in seqs if s > middle["data"]["seq"]]

    import threading

    restarted = threading.Timer(1.0, lambda: api.call("POST", "/services/web/restart", "operator"))
    restarted.start()
    try:
        live = read_sse(
            api.url("/events?service=web"),
            token=api.tokens["viewer"],
            until=lambda evs: any(e["event"] == "state" and e["data"]["to"] == "RUNNING" for e in evs),
        )
    finally:
        restarted.join()
    assert all(e["data"]["seq"] > seqs[-1] for e in live)
    assert any(e["data"]["to"] == "STOPPING" for e in live if e["event"] == "state")


def test_state_changing_calls_are_in_the_audit_log(api: Api) -> None:
    api.call("POST", "/services/web/pause", "operator")
    api.call("POST", "/services/web/resume", "viewer")  # refused: audited too
    api.call("POST", "/services/web/resume", "operator")
    result = api.cli("audit", "--json", "-n", "1000")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    mine = [(e["token"], e["method"], e["path"], e["status"]) for e in entries[-3:]]
    assert mine == [
        ("operator", "POST", "/api/v1/services/web/pause", 200),
        ("viewer", "POST", "/api/v1/services/web/resume", 403),
        ("operator", "POST", "/api/v1/services/web/resume", 200),
    ]
    assert all(e["ts"] and e["remote"] == "127.0.0.1" for e in entries[-3:])
    assert not any(e["method"] == "GET" for e in entries)
    acme = json.loads(api.cli("audit", "--json", "--tenant", "acme").stdout)
    assert acme and all(e["tenant"] == "acme" for e in acme)
