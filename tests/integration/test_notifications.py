"""Notifications end to end: the real daemon, a real SMTP server (aiosmtpd) and a real HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from supervise.protocol import RemoteError
from tests.conftest import Daemon, stop_daemon, wait_for, write_config

SECRET = "s3cret-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the receivers -----------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server that records every POST; `start` and `stop` take the port up and down."""

    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                requests.append(Received(dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Mailbox:
    """aiosmtpd's handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


# -- the daemon --------------------------------------------------------------------------------------


def write(
    folder: Path, notify: dict[str, dict[str, object]], services: dict[str, dict[str, object]], **supervisor: object
) -> Path:
    return write_config(folder, services, notify=notify, **supervisor)


def webhook(hook: Receiver, **keys: object) -> dict[str, object]:
    return {"type": "webhook", "url": hook.url, "secret": SECRET, **keys}


def outbox(d: Daemon, **args: object) -> list[dict[str, Any]]:
    return list(d.client.call("notifications", limit=1000, **args)["notifications"])


def settled(d: Daemon, at_least: int = 1) -> list[dict[str, Any]]:
    """The outbox once it holds `at_least` rows and none is pending any more (a service event's row
    is written after the state `status` shows, by the history's writer)."""
    return wait_for(
        lambda: (rows := outbox(d)) and len(rows) >= at_least and all(r["state"] != "pending" for r in rows) and rows,
        timeout_s=30,
        what="every notification delivered or given up",
    )


def verify(request: Received) -> dict[str, Any]:
    """Check the signature as a receiver would; returns the JSON body."""
    timestamp = request.headers["X-Supervise-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Supervise-Signature"], f"sha256={expected}")
    body: dict[str, Any] = request.json()
    return body


FAILING_JOB = {"command": ["sh", "-c", "echo 'disk full: /var/reports' >&2; exit 3"], "manual": True}


# -- the tests ---------------------------------------------------------------------------------------


def test_a_failing_job_sends_exactly_one_email_and_one_signed_webhook(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp_port = mailbox
    hook.start()
    notify = {
        "chat": webhook(hook),
        "mail": {
            "type": "email",
            "host": "127.0.0.1",
            "port": smtp_port,
            "tls": "none",
            "from": "supervise@example.com",
            "to": ["ops@example.com"],
            "subject": "[{{ host }}] {{ summary }}",
        },
    }
    job = {**FAILING_JOB, "notify": {"on": ["failure"], "to": ["chat", "mail"]}}
    d = launch(write(short_dir, notify, {"report": job}))
    run_id = d.client.call("run", name="report")["run_id"]

    rows = settled(d)
    assert sorted((r["channel"], r["state"], r["attempts"]) for r in rows) == [
        ("chat", "delivered", 1),
        ("mail", "delivered", 1),
    ]
    (request,) = hook.requests
    body = verify(request)
    assert (body["service"], body["event"], body["run_id"], body["count"]) == ("report", "failure", run_id, 1)
    assert request.headers["X-Supervise-Notification-Id"] == body["id"]
    (mail,) = box.messages
    assert mail["To"] == "ops@example.com" and mail["From"] == "supervise@example.com"
    assert f"report: run {run_id[:12]} failed" in mail["Subject"]
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"run:     {run_id}" in text and "more:    supervise runs report" in text
    status = d.client.call("status")["supervisor"]["notifications"]
    assert (status["sent"], status["failed"]) == (2, 0)
    listing = d.cli("notifications")
    assert listing.returncode == 0 and listing.stdout.count("delivered") == 2, listing.stderr
    assert d.cli("notifications", "--failed").stdout.strip().startswith("CREATED")  # the header, no rows


def test_a_crash_loop_of_50_restarts_sends_at_most_3_messages(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    looping = {
        "command": ["sh", "-c", "exit 1"],
        "max_restarts": 50,
        "restart_window": "10m",
        "backoff": "10ms",
        "backoff_max": "10ms",
        "notify": {"on": ["failure", "fatal", "recovered"], "to": ["chat"], "min_interval": "5m"},
    }
    d = launch(write(short_dir, {"chat": webhook(hook)}, {"looping": looping}))
    final = d.wait_state("looping", "FATAL", timeout_s=60)
    assert final["restarts"] == 50
    settled(d, at_least=2)
    events = [verify(r)["event"] for r in hook.requests]
    assert events == ["failure", "fatal"]
    fatal = verify(hook.requests[-1])
    # 51 exits (the first run and 50 restarts), then FATAL: the first exit was the first message
    assert fatal["count"] == 51 and fatal["counts"] == {"failure": 50, "fatal": 1}


def test_a_receiver_down_for_10_s_gets_the_message_once_when_it_comes_back(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    channel = webhook(hook, backoff="1s", backoff_max="2s", max_attempts=20)
    job = {**FAILING_JOB, "notify": {"on": ["failure"], "to": ["chat"]}}
    d = launch(write(short_dir, {"chat": channel}, {"report": job}))
    d.client.call("run", name="report")
    wait_for(lambda: (rows := outbox(d)) and rows[0]["attempts"] >= 1, what="a first, failed attempt")
    seen = wait_for(
        lambda: (rows := outbox(d)) and rows[0]["attempts"] >= 5 and rows[0], timeout_s=20, what="five attempts"
    )
    assert seen["state"] == "pending" and "ClientConnectorError" in seen["last_error"]
    hook.start()

    (row,) = settled(d)
    assert row["state"] == "delivered" and len(hook.requests) == 1
    failures = d.client.call("events", service="report")["events"]
    failed_attempts = [e for e in failures if e["kind"] == "notification_failed"]
    assert row["attempts"] == len(failed_attempts) + 1
    assert [e["attempt"] for e in failed_attempts] == list(range(1, row["attempts"]))
    assert d.client.call("metrics")["supervisor"]["notifications"]["failed"] == len(failed_attempts)
    scrape = d.client.call("metrics")["supervisor"]["notifications"]
    assert scrape["sent"] == 1 and scrape["given_up"] == 0


def test_a_supervisor_killed_before_delivery_delivers_once_after_restart(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    # backoff 3s: the kill lands between two attempts, not inside one (an attempt cut short by the kill
    # would be retried only once its lease ends, 40 s later)
    channel = webhook(hook, backoff="3s", backoff_max="3s", max_attempts=100)
    job = {**FAILING_JOB, "notify": {"on": ["failure"], "to": ["chat"]}}
    config = write(short_dir, {"chat": channel}, {"report": job})
    first = launch(config)
    first.client.call("run", name="report")
    (pending,) = wait_for(
        lambda: (rows := outbox(first)) and rows[0]["attempts"] >= 1 and rows, what="an undelivered notification"
    )
    assert pending["state"] == "pending"
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    hook.start()

    second = launch(config)
    (row,) = settled(second)
    assert (row["id"], row["state"]) == (pending["id"], "delivered")
    (request,) = hook.requests
    assert request.headers["X-Supervise-Notification-Id"] == pending["id"]
    assert verify(request)["event"] == "failure"


def test_with_a_postgresql_store_a_killed_supervisor_delivers_once_after_restart(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    from tests.contract.conftest import drop_schema, postgres_dsn

    dsn = postgres_dsn()
    schema = f"supervise_test_{uuid.uuid4().hex[:12]}"
    try:
        channel = webhook(hook, backoff="3s", backoff_max="3s")
        job = {**FAILING_JOB, "notify": {"on": ["failure"], "to": ["chat"]}}
        config = write(short_dir, {"chat": channel}, {"report": job}, store=f"{dsn}?schema={schema}")
        first = launch(config)
        first.client.call("run", name="report")
        wait_for(lambda: (rows := outbox(first)) and rows[0]["attempts"] >= 1, what="a first, failed attempt")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        hook.start()
        second = launch(config)
        (row,) = settled(second)
        assert (row["state"], len(hook.requests)) == ("delivered", 1)
        stop_daemon(second)
    finally:
        drop_schema(dsn, schema)


def test_a_channel_that_cannot_deliver_never_slows_supervision(
    launch: Callable[[Path], Daemon], short_dir: Path
) -> None:
    # An SMTP "server" that accepts connections and never answers: each attempt waits out its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        mail = {
            "type": "email",
            "host": "127.0.0.1",
            "port": silent.getsockname()[1],
            "tls": "none",
            "from": "supervise@example.com",
            "to": ["ops@example.com"],
            "timeout": "30s",
        }
        job = {**FAILING_JOB, "notify": {"on": ["failure"], "to": ["mail"]}}
        d = launch(write(short_dir, {"mail": mail}, {"report": job}))
        d.client.call("run", name="report")
        wait_for(lambda: outbox(d), what="the notification in the outbox")
        for _ in range(20):  # control round trips and runs go on while the SMTP attempt hangs
            d.client.call("ping")
        second = d.client.call("run", name="report")["run_id"]

        def second_failed() -> bool:
            return any(r["run_id"] == second and r["state"] == "failed" for r in d.client.call("runs")["runs"])

        wait_for(second_failed, what="a second run to finish while the first notification hangs")
        assert all(r["attempts"] == 0 for r in outbox(d))  # still the first attempt, in flight
        stopping = time.monotonic()
        stop_daemon(d)
        assert time.monotonic() - stopping < 10  # a hung SMTP attempt does not hold the shutdown either
    finally:
        silent.close()


def test_services_added_at_runtime_take_notify_rules_and_unknown_channels_are_refused(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    d = launch(write(short_dir, {"chat": webhook(hook, preset="slack")}, {}))
    with pytest.raises(RemoteError, match=r'services\.late\.notify\.to: unknown channel "pager"'):
        d.client.call("add", name="late", spec={**FAILING_JOB, "notify": {"to": ["pager"]}})
    d.client.call("add", name="late", spec={**FAILING_JOB, "notify": {"on": ["failure"], "to": ["chat"]}})
    d.client.call("run", name="late")
    (row,) = settled(d)
    assert row["state"] == "delivered"
    (request,) = hook.requests
    text = verify(request)["text"]  # the Slack preset: {"text": ...}
    assert text.startswith(":rotating_light: *late: run ") and "disk full: /var/reports" in text

    # "tell me when my job ran": a task added through the API with a webhook of its own
    own = {"on": ["success"], "webhook": {"url": hook.url, "secret": SECRET}}
    d.client.call("add", name="task", spec={"command": "true", "manual": True, "notify": own})
    run_id = d.client.call("run", name="task")["run_id"]
    rows = wait_for(lambda: [r for r in settled(d) if r["service"] == "task"], what="the task's notification")
    assert [(r["channel"], r["event"], r["state"]) for r in rows] == [("webhook", "success", "delivered")]
    body = verify(hook.requests[-1])
    assert (body["service"], body["event"], body["run_id"]) == ("task", "success", run_id)


def test_retries_exhausted_is_one_message_for_the_last_attempt(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    job = {
        "target": "tests.children.jobs:fail",
        "manual": True,
        "retries": {"max": 2, "backoff": "fixed", "initial": "50ms"},
        "notify": {"on": ["retries_exhausted"], "to": ["chat"]},
    }
    d = launch(write(short_dir, {"chat": webhook(hook)}, {"flaky": job}))
    d.client.call("run", name="flaky")
    wait_for(lambda: len(d.client.call("runs", name="flaky", state="failed")["runs"]) == 3, what="3 failed attempts")
    (row,) = settled(d)
    (request,) = hook.requests
    body = verify(request)
    assert (row["event"], body["event"], body["attempt"]) == ("retries_exhausted", "retries_exhausted", 3)
    assert body["error_lines"][-1] == "RuntimeError: attempt 3 failed"


def test_a_job_that_fails_then_succeeds_sends_failure_then_recovered(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    flag = short_dir / "fixed"
    job = {"command": ["sh", "-c", f"test -f {flag}"], "manual": True}
    d = launch(write(short_dir, {"chat": webhook(hook)}, {"report": {**job, "notify": {"to": ["chat"]}}}))
    for state in ("failed", "failed", "succeeded", "succeeded"):
        if state == "succeeded":
            flag.touch()
        run_id = d.client.call("run", name="report")["run_id"]

        def ended(run_id: str = run_id, state: str = state) -> bool:
            return any(r["run_id"] == run_id for r in d.client.call("runs", state=state)["runs"])

        wait_for(ended, what=f"run {run_id} {state}")
    settled(d)
    sent = [verify(r) for r in hook.requests]
    assert [b["event"] for b in sent] == ["failure", "recovered"]
    assert sent[1]["count"] == 2 and sent[1]["summary"].startswith("report: recovered after 2 failures")


def test_a_crash_looping_service_that_comes_up_stable_sends_recovered(
    launch: Callable[[Path], Daemon], short_dir: Path, hook: Receiver
) -> None:
    hook.start()
    marks = short_dir / "marks"
    script = (
        f'echo x >> {marks}; [ "$(wc -l < {marks})" -gt 3 ] && exec sleep 1000; '
        f'echo "crash $(wc -l < {marks})" >&2; exit 2'
    )
    svc = {
        "command": ["sh", "-c", script],
        "backoff": "50ms",
        "backoff_max": "50ms",
        "stable_after": "1s",
        "notify": {"on": ["failure", "recovered"], "to": ["chat"]},
    }
    d = launch(write(short_dir, {"chat": webhook(hook)}, {"web": svc}))
    wait_for(lambda: len(hook.requests) == 2, timeout_s=20, what="failure and recovered")
    first, second = (verify(r) for r in hook.requests)
    assert (first["event"], first["summary"]) == ("failure", "web: exited with code 2")
    assert first["output_lines"][-1] == "crash 1" and first["command"] == "supervise logs web"
    assert (second["event"], second["count"]) == ("recovered", 3)
    assert d.state("web") == "RUNNING"
