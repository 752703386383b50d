"""Schemathesis against the OpenAPI document a running daemon serves: no 5xx, every answer matches its schema.

A bounded number of generated requests per operation (`EXAMPLES`), with an
admin token, so that every check past authentication is reached. The events
stream is left out: it does not end while the daemon runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from supervise.supervisor.api.store import Role
from tests.conftest import start_daemon, stop_daemon, write_config
from tests.integration.test_api import make_tokens

EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.timeout(600)
def test_generated_requests_get_no_5xx_and_answers_match_the_document(short_dir: Path) -> None:
    services = {"web": {"command": ["sleep", "3600"]}, "nightly": {"command": ["true"], "cron": "0 2 * * *"}}
    config = write_config(short_dir, services, http="127.0.0.1:0", tenant_max_pending_tasks=20)
    token = make_tokens(short_dir / "state", {"admin": (Role.ADMIN, None)})["admin"]
    daemon = start_daemon(config)
    try:
        base = "http://" + daemon.client.call("ping")["http"]
        schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
        headers = {"Authorization": f"Bearer {token}"}
        tested = 0
        statuses: dict[int, int] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path.endswith(("/events", "/stream")):  # streams do not end while the daemon runs
                continue

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=base, headers=headers, timeout=30)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=CHECKS)

            check()
            tested += 1
        print(f"{tested} operations, answers by status: {sorted(statuses.items())}")
        assert tested >= 25 and sum(statuses.values()) >= tested
        assert daemon.proc.poll() is None
    finally:
        stop_daemon(daemon)
