"""The HTTP API's parts that need no daemon: tokens at rest, the failure limiter, the models, the document."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import ValidationError

from supervise.supervisor.api.models import TASK_HEADER, JobCreate, TaskCreate
from supervise.supervisor.api.openapi import document
from supervise.supervisor.api.resources import Resources
from supervise.supervisor.api.server import FailureLimiter, validation_problem
from supervise.supervisor.api.store import ApiStore, Role
from supervise.supervisor.api.tasks import Tasks, _exception_text
from supervise.supervisor.cli.api_admin import parse_expiry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApiStore]:
    s = ApiStore(tmp_path / "state")
    yield s
    s.close()


def route_table() -> list[Any]:
    """The API's route table, from handlers that are never called (no daemon behind them)."""
    resources = Resources.__new__(Resources)
    resources.tasks = Tasks.__new__(Tasks)
    return resources.routes()


def test_a_token_verifies_only_with_its_exact_secret_and_only_its_hash_is_stored(store: ApiStore) -> None:
    text, row = store.create_token("ci", Role.OPERATOR, "acme", None)
    assert text.startswith(f"svt_{row.id}_")
    verified = store.verify(text)
    assert verified is not None and verified.role is Role.OPERATOR and verified.tenant == "acme"
    assert store.verify(text[:-1] + ("A" if text[-1] != "A" else "B")) is None
    assert store.verify(text + "x") is None
    assert store.verify("") is None and store.verify("svt_") is None
    assert store.verify(text.replace(row.id, "0" * 12)) is None
    hashes = [r[0] for r in sqlite3.connect(store.path).execute("SELECT hash FROM tokens")]
    assert text[17:] not in hashes[0] and len(hashes[0]) == 64
    assert store.revoke("ci") and store.verify(text) is None
    assert not store.revoke("ci")


def test_an_expired_token_is_refused_and_names_and_tenants_are_checked(store: ApiStore) -> None:
    expired, _ = store.create_token("old", Role.ADMIN, None, timedelta(seconds=-1))
    assert store.verify(expired) is None
    fresh, _ = store.create_token("new", Role.ADMIN, None, timedelta(days=90))
    assert store.verify(fresh) is not None
    assert store.usable_token_count() == 1
    with pytest.raises(ValueError, match="exists"):
        store.create_token("new", Role.VIEWER, None, None)
    with pytest.raises(ValueError, match="tenant"):
        store.create_token("t", Role.VIEWER, "Acme Corp", None)
    with pytest.raises(ValueError, match="token name"):
        store.create_token("a b", Role.VIEWER, None, None)


def test_roles_are_ordered_and_parsed() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse("Admin") is Role.ADMIN and str(Role.OPERATOR) == "operator"
    with pytest.raises(ValueError, match="viewer, operator or admin"):
        Role.parse("root")


def test_expiry_text() -> None:
    assert parse_expiry("90d") == timedelta(days=90)
    assert parse_expiry("12h") == timedelta(hours=12)
    assert parse_expiry("2w") == timedelta(weeks=2)
    with pytest.raises(click.BadParameter):
        parse_expiry("soon")


def test_the_failure_limiter_blocks_an_address_for_the_rest_of_its_window() -> None:
    limiter = FailureLimiter(limit=3, window_s=60)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("a", t) is None
        limiter.failed("a", t)
    assert limiter.retry_after("a", 3.0) == 58
    assert limiter.retry_after("b", 3.0) is None
    assert limiter.retry_after("a", 60.5) is None  # the first failure has left the window


def test_task_urls_headers_and_datetimes_are_checked_by_the_model() -> None:
    own = {"own_host": "127.0.0.1", "own_port": 9180}
    ok = TaskCreate.model_validate({"url": "https://example.com/x", "body": {"a": 1}}, context=own)
    args = ok.run_args("t1")
    assert args["headers"] == {TASK_HEADER: "t1", "Content-Type": "application/json"}
    assert args["body"] == '{"a": 1}' and args["method"] == "POST"
    assert TaskCreate.model_validate({"url": "http://127.0.0.1:9181/"}, context=own).url.endswith("9181/")
    for bad in (
        {"url": "http://[::1]:9180/api/v1/tasks"},
        {"url": "http://0.0.0.0:9180/"},
        {"url": "gopher://example.com/"},
        {"url": "http://example.com/", "headers": {"X": "a\nb"}},
        {"url": "http://example.com/", "at": "2030-01-01T00:00:00"},
        {"url": "http://example.com/", "expect_status": {"low": 300, "high": 200}},
    ):
        with pytest.raises(ValidationError):
            TaskCreate.model_validate(bad, context=own)


def test_a_validation_error_becomes_a_problem_with_json_pointers() -> None:
    with pytest.raises(ValidationError) as caught:
        TaskCreate.model_validate_json(b'{"url": "http://example.com", "retries": {"max": -1}, "x": 1}')
    problem = validation_problem(caught.value)
    assert problem.status == 422
    assert {e["pointer"] for e in problem.errors or []} == {"/retries/max", "/x"}
    with pytest.raises(ValidationError) as malformed:
        TaskCreate.model_validate_json(b'{"url": ')
    assert validation_problem(malformed.value).status == 400


def test_a_job_needs_one_runnable_and_one_trigger_that_fires() -> None:
    assert (
        JobCreate.model_validate({"name": "j", "command": ["true"], "cron": "0 2 * * *"}).table()["cron"] == "0 2 * * *"
    )
    for bad in (
        {"name": "j", "command": ["true"]},
        {"name": "j", "command": ["true"], "every": "1h", "cron": "* * * * *"},
        {"name": "j", "command": ["true"], "cron": "0 0 30 2 *"},
        {"name": "j", "every": "1h"},
        {"name": "j", "command": ["true"], "every": "often"},
    ):
        with pytest.raises(ValidationError):
            JobCreate.model_validate(bad)


def test_the_document_names_a_schema_for_every_body_and_every_reference_resolves() -> None:
    routes = route_table()
    doc = document(routes)
    schemas = doc["components"]["schemas"]
    text = str(doc)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in schemas, ref
    operations = [op for path in doc["paths"].values() for op in path.values()]
    assert len(operations) == len(routes)
    assert len({op["operationId"] for op in operations}) == len(operations)


def test_the_exception_of_a_traceback_keeps_a_message_that_spans_lines() -> None:
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\nE: answered 501: <p>\nError</p>\n'
    assert _exception_text(tb) == "E: answered 501: <p>\nError</p>"
    assert _exception_text("plain") == "plain" and _exception_text(None) is None


def test_the_endpoint_table_of_docs_api_md_is_the_route_table() -> None:
    from supervise.supervisor.api.browser import Browser
    from supervise.supervisor.api.cluster import ClusterResource
    from supervise.supervisor.api.openapi import reference_markdown

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert reference_markdown(route_table()) in text
    assert reference_markdown(Browser.__new__(Browser).routes()) in text
    for row in reference_markdown(ClusterResource.__new__(ClusterResource).routes()).splitlines()[2:]:
        assert row in text  # in the main table


def test_writes_behind_are_read_back_at_once_and_committed_together_by_the_scheduled_flush(tmp_path: Path) -> None:
    from supervise.supervisor.api.store import TaskRow

    scheduled: list[Any] = []
    store = ApiStore(tmp_path / "state")
    store.write_behind(scheduled.append)
    other = ApiStore(tmp_path / "state")  # another process's view, as `supervise audit` has
    try:
        token = store.create_token("ci", Role.OPERATOR, None, None)[1]
        row = TaskRow("t" * 32, None, "api-tasks-r0", "r" * 32, "2099-01-01T00:00:00+00:00", {"url": "x"}, 1.0, None)
        store.add_task(row)
        store.audit(token, "127.0.0.1", "POST", "/api/v1/tasks", 201, "Call a URL at a datetime")
        assert len(scheduled) == 1  # one flush for the turn's writes
        assert other.task(row.id) is None and other.audit_entries() == []  # not committed yet
        assert store.task(row.id) == row  # but read back by the writer: a read flushes first
        assert other.task(row.id) == row and len(other.audit_entries()) == 1
        store.audit(token, "127.0.0.1", "DELETE", "/api/v1/tasks/x", 200, "Cancel")
        scheduled[-1]()  # the loop's next turn
        assert len(other.audit_entries()) == 2
        store.audit(token, "127.0.0.1", "POST", "/api/v1/tasks", 201, "Call")
    finally:
        store.close()  # flushes what is queued
        assert len(other.audit_entries()) == 3
        other.close()
