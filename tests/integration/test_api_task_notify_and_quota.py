"""A task's `notify` (its own signed webhook and the daemon's channels, through the outbox, with a real receiver),
and the runs-per-minute quota of tenants."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervise.supervisor.api.store import ApiStore, Role, TenantQuotas
from tests.conftest import Daemon, start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import Answer, Receiver, call, start_receiver
from tests.integration.test_api import make_tokens, pointers, problem

SECRET = "a-task-webhook-secret"
TOKENS = {
    "admin": (Role.ADMIN, None),
    "operator": (Role.OPERATOR, None),
    "acme-operator": (Role.OPERATOR, "acme"),
    "rate-operator": (Role.OPERATOR, "rate"),
    "rate-admin": (Role.ADMIN, "rate"),
    "solo-operator": (Role.OPERATOR, "solo"),
    "few-operator": (Role.OPERATOR, "few"),
}
RUNS_PER_MINUTE = 3


@dataclass
class Hooks:
    """A local HTTP server for notifications: `/flaky...` answers 500 to its first request, the rest 204."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        requests = self.requests
        seen: set[str] = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                first = self.path not in seen
                seen.add(self.path)
                requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                self.send_response(500 if self.path.startswith("/flaky") and first else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if json.loads(r["body"]).get("task", {}).get("id") == task_id]


@dataclass
class Env:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    target: Receiver
    hooks: Hooks
    config: Path | None = None

    def call(self, method: str, path: str, who: str = "operator", **kwargs: Any) -> Answer:
        return call(method, f"{self.base}/api/v1{path}", token=self.tokens[who], **kwargs)

    def create(self, who: str = "operator", **body: Any) -> dict[str, Any]:
        answer = self.call("POST", "/tasks", who, body=body)
        assert answer.status == 201, answer.text
        created: dict[str, Any] = answer.json
        return created

    def notified(self, task_id: str, state: str = "sent") -> dict[str, Any]:
        return wait_for(
            lambda: (t := self.call("GET", f"/tasks/{task_id}").json)["notify"]["state"] == state and t,
            timeout_s=30,
            what=f"task {task_id}'s notification {state}",
            interval_s=0.1,
        )

    def outbox(self, task_id: str) -> list[dict[str, Any]]:
        rows = self.daemon.client.call("notifications", limit=1000)["notifications"]
        return [r for r in rows if r["id"].startswith(f"task:{task_id}|")]

    def delivered(self, task_id: str, count: int = 1) -> list[dict[str, Any]]:
        return wait_for(
            lambda: len(rows := self.outbox(task_id)) == count and all(r["state"] != "pending" for r in rows) and rows,
            timeout_s=30,
            what=f"{count} notification(s) of task {task_id} settled",
            interval_s=0.1,
        )


def configure(folder: Path, hooks: Hooks) -> Path:
    ops = {"type": "webhook", "url": hooks.url("/ops"), "secret": SECRET}
    return write_config(
        folder,
        {},
        notify={"ops": ops},
        http="127.0.0.1:0",
        allow_addresses=["127.0.0.1"],
        tenant_max_runs_per_minute=RUNS_PER_MINUTE,
    )


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    folder = Path(tempfile.mkdtemp(prefix="sv-tn-", dir="/tmp"))
    hooks = Hooks()
    hooks.start()
    target = start_receiver()
    config = configure(folder, hooks)
    tokens = make_tokens(folder / "state", TOKENS)
    store = ApiStore(folder / "state")
    try:  # tenants with quotas of their own
        store.set_quotas("solo", TenantQuotas(max_runs_per_minute=1))
        store.set_quotas("few", TenantQuotas(max_pending_tasks=2))
    finally:
        store.close()
    daemon = start_daemon(config)
    try:
        yield Env(daemon, "http://" + daemon.client.call("ping")["http"], tokens, target, hooks, config)
    finally:
        stop_daemon(daemon)
        target.close()
        hooks.stop()
        shutil.rmtree(folder, ignore_errors=True)


def verify(request: dict[str, Any]) -> dict[str, Any]:
    """Check the signature as a receiver would; returns the JSON body."""
    timestamp = request["headers"]["X-Supervise-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Supervise-Signature"], f"sha256={expected}")
    body: dict[str, Any] = json.loads(request["body"])
    return body


def test_a_task_with_a_webhook_sends_one_signed_message_once_it_has_run(env: Env) -> None:
    hook = {"url": env.hooks.url("/done"), "secret": SECRET, "headers": {"X-Team": "billing"}}
    task = env.create(url=env.target.url, notify={"webhook": hook})
    assert task["notify"] == {
        "on": ["success", "failure", "retries_exhausted", "timed_out", "lost", "missed"],
        "to": [],
        "webhook": hook["url"],
        "state": "waiting",
        "event": None,
    }
    assert SECRET not in json.dumps(task)
    seen = env.notified(task["id"])
    assert seen["notify"]["event"] == "success" and seen["state"] == "succeeded"
    (row,) = env.delivered(task["id"])
    assert (row["channel"], row["state"], row["attempts"], row["event"]) == (
        f"task:{task['id']}",
        "delivered",
        1,
        "success",
    )
    (request,) = env.hooks.for_task(task["id"])
    assert request["path"] == "/done" and request["headers"]["X-Team"] == "billing"
    assert request["headers"]["X-Supervise-Notification-Id"] == row["id"]
    body = verify(request)
    assert body["event"] == "success" and body["task"]["result"] == {"status": 200, "body": "received"}
    assert body["task"]["attempts"] == 1 and body["summary"].endswith("succeeded (HTTP 200)")


def test_a_failing_task_with_retries_sends_one_message_after_its_last_attempt(env: Env) -> None:
    notify = {"webhook": env.hooks.url("/failed"), "to": ["ops"]}
    task = env.create("admin", url=f"{env.target.url}/fail", retries={"max": 1}, notify=notify)
    env.notified(task["id"])
    rows = env.delivered(task["id"], count=2)
    assert sorted((r["channel"], r["event"], r["state"]) for r in rows) == [
        ("ops", "retries_exhausted", "delivered"),
        (f"task:{task['id']}", "retries_exhausted", "delivered"),
    ]
    requests = env.hooks.for_task(task["id"])
    assert sorted(r["path"] for r in requests) == ["/failed", "/ops"]
    body = verify(next(r for r in requests if r["path"] == "/ops"))  # the channel's secret signs it
    assert body["task"]["attempts"] == 2 and body["task"]["state"] == "failed"
    assert "answered 500" in body["error"]
    assert "X-Supervise-Signature" not in next(r for r in requests if r["path"] == "/failed")["headers"]


def test_an_outcome_not_in_on_sends_nothing(env: Env) -> None:
    task = env.create(url=env.target.url, notify={"webhook": env.hooks.url("/never"), "on": ["failure"]})
    seen = env.notified(task["id"], "not_sent")
    assert seen["state"] == "succeeded" and seen["notify"]["event"] is None
    assert env.outbox(task["id"]) == [] and env.hooks.for_task(task["id"]) == []


def test_a_webhook_that_fails_is_retried_and_delivered_once(env: Env) -> None:
    task = env.create(url=env.target.url, notify={"webhook": env.hooks.url(f"/flaky/{id(env)}")})
    (row,) = env.delivered(task["id"])
    assert (row["state"], row["attempts"]) == ("delivered", 2)
    assert len(env.hooks.for_task(task["id"])) == 2  # the refused attempt and the delivered one


def test_a_webhook_outside_the_address_policy_is_refused_at_delivery(env: Env) -> None:
    # 127.0.0.2 is loopback, and only 127.0.0.1 is in allow_addresses
    task = env.create(url=env.target.url, notify={"webhook": f"http://127.0.0.2:{env.hooks.port}/x"})
    (row,) = env.delivered(task["id"])
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert "127.0.0.2" in row["last_error"] and "allow_addresses" in row["last_error"]


def test_cancelling_a_task_cancels_its_notification(env: Env) -> None:
    task = env.create(url=env.target.url, at="2099-01-01T00:00:00+00:00", notify={"webhook": env.hooks.url("/c")})
    assert env.call("DELETE", f"/tasks/{task['id']}").status == 200
    assert env.call("GET", f"/tasks/{task['id']}").json["notify"]["state"] == "not_sent"


def test_notify_bad_input_is_refused_and_nothing_is_stored(env: Env) -> None:
    before = len(env.call("GET", "/tasks?limit=500").json["tasks"])
    url = env.target.url

    def bad(body: dict[str, Any], who: str = "operator") -> Answer:
        return env.call("POST", "/tasks", who, body={"url": url, **body})

    assert "/notify" in pointers(bad({"notify": {}}))
    assert "/notify/webhook/url" in pointers(bad({"notify": {"webhook": "ftp://example.com/"}}))
    assert "/notify/webhook/url" in pointers(bad({"notify": {"webhook": "https://u:p@example.com/"}}))
    assert "/notify/webhook/url" in pointers(bad({"notify": {"webhook": env.base + "/api/v1/tasks"}}))
    assert "/notify/webhook/secret" in pointers(bad({"notify": {"webhook": {"url": url, "secret": "short"}}}))
    hook = {"url": url, "headers": {"X-Supervise-Signature": "forged"}}
    assert "/notify/webhook/headers" in pointers(bad({"notify": {"webhook": hook}}))
    assert "/notify/on/0" in pointers(bad({"notify": {"webhook": url, "on": ["cancelled"]}}))
    assert "/notify/webhook/extra" in pointers(bad({"notify": {"webhook": {"url": url, "extra": 1}}}))
    assert "/notify/to" in pointers(bad({"notify": {"to": ["pager"]}}, "admin"))
    assert "daemon's channels" in problem(bad({"notify": {"to": ["ops"]}}, "acme-operator"), 403)["detail"]
    assert len(env.call("GET", "/tasks?limit=500").json["tasks"]) == before


def test_a_daemon_killed_before_delivery_delivers_a_tasks_message_once_after_restart() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sv-tnk-", dir="/tmp"))
    hooks = Hooks()
    hooks.start()
    target = start_receiver()
    daemons: list[Daemon] = []
    try:
        port = hooks.port
        hooks.stop()  # down: the first attempts fail
        config = configure(folder, hooks)
        tokens = make_tokens(folder / "state", TOKENS)
        first = start_daemon(config)
        daemons.append(first)
        base = "http://" + first.client.call("ping")["http"]
        env = Env(first, base, tokens, target, hooks)
        task = env.create(url=target.url, notify={"webhook": {"url": hooks.url("/after"), "secret": SECRET}})
        (pending,) = wait_for(
            lambda: (rows := env.outbox(task["id"])) and rows[0]["attempts"] >= 1 and rows,
            timeout_s=30,
            what="a first, failed attempt",
        )
        assert pending["state"] == "pending"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        hooks.port = port
        hooks.start()

        second = start_daemon(config)
        daemons.append(second)
        env.daemon = second
        env.base = "http://" + second.client.call("ping")["http"]
        (row,) = env.delivered(task["id"])
        assert (row["id"], row["state"]) == (pending["id"], "delivered")
        (request,) = hooks.for_task(task["id"])
        assert verify(request)["event"] == "success"
        assert env.call("GET", f"/tasks/{task['id']}").json["notify"]["state"] == "sent"
    finally:
        for daemon in daemons:
            stop_daemon(daemon)
        target.close()
        hooks.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_tenant_over_its_runs_per_minute_gets_429_with_retry_after(env: Env) -> None:
    later = "2099-01-01T00:00:00+00:00"
    job = {"name": "rate-job", "target": "tests.children.jobs@settle-merchants", "manual": True}
    assert env.call("POST", "/jobs", "rate-admin", body=job).status == 201
    refused = env.call("POST", "/tasks", "rate-operator", body={"url": "ftp://example.com/"})
    assert refused.status == 422  # refused requests start nothing and are not counted
    made = [env.create("rate-operator", url=env.target.url, at=later)["id"] for _ in range(RUNS_PER_MINUTE)]
    over = env.call("POST", "/tasks", "rate-operator", body={"url": env.target.url, "at": later})
    assert "tenant_max_runs_per_minute" in problem(over, 429)["detail"]
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert problem(env.call("POST", "/jobs/rate-job/run", "rate-operator", body={}), 429)
    env.create("operator", url=env.target.url, at=later)  # a token without a tenant has no quota
    env.create("acme-operator", url=env.target.url, at=later)  # another tenant has its own
    for task_id in made:
        env.call("DELETE", f"/tasks/{task_id}", "rate-operator")  # cancelling does not give a start back
    assert env.call("POST", "/tasks", "rate-operator", body={"url": env.target.url, "at": later}).status == 429


def test_a_task_whose_daemon_was_killed_during_its_call_is_notified_lost_after_restart() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sv-tnl-", dir="/tmp"))
    hooks = Hooks()
    hooks.start()
    released = threading.Event()
    arrived = threading.Event()

    class Hanging(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            arrived.set()
            released.wait(60)  # the call is in flight when the daemon is killed
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    daemons: list[Daemon] = []
    try:
        config = configure(folder, hooks)
        tokens = make_tokens(folder / "state", TOKENS)
        first = start_daemon(config)
        daemons.append(first)
        env = Env(first, "http://" + first.client.call("ping")["http"], tokens, start_receiver(), hooks)
        env.target.close()
        url = f"http://127.0.0.1:{target.server_address[1]}/slow"
        task = env.create(url=url, notify={"webhook": {"url": hooks.url("/lost"), "secret": SECRET}})
        assert arrived.wait(30), "the task's call never arrived"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)

        second = start_daemon(config)
        daemons.append(second)
        env.daemon, env.base = second, "http://" + second.client.call("ping")["http"]
        seen = env.notified(task["id"])
        assert seen["state"] == "lost" and seen["notify"]["event"] == "lost"
        (row,) = env.delivered(task["id"])
        assert row["state"] == "delivered"
        (request,) = hooks.for_task(task["id"])
        assert verify(request)["task"]["state"] == "lost"
    finally:
        released.set()
        for daemon in daemons:
            stop_daemon(daemon)
        target.shutdown()
        target.server_close()
        hooks.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_tenant_with_quotas_of_its_own_is_held_to_them_and_a_change_applies_while_the_daemon_runs(
    env: Env,
) -> None:
    later = "2099-01-01T00:00:00+00:00"
    env.create("solo-operator", url=env.target.url, at=later)
    over = env.call("POST", "/tasks", "solo-operator", body={"url": env.target.url, "at": later})
    assert "started 1 runs" in problem(over, 429)["detail"]
    for _ in range(2):
        env.create("few-operator", url=env.target.url, at=later)
    full = env.call("POST", "/tasks", "few-operator", body={"url": env.target.url, "at": later})
    assert "its quota is 2" in problem(full, 429)["detail"]

    assert env.config is not None
    raised = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "tenant", "quota", "solo", "--max-runs-per-minute", "5"]
        + ["-c", str(env.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert raised.returncode == 0, raised.stderr
    wait_for(
        lambda: env.call("POST", "/tasks", "solo-operator", body={"url": env.target.url, "at": later}).status == 201,
        what="the raised quota to apply",
    )
