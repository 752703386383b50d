"""The example clients of examples/clients (curl and JavaScript fetch) against a live daemon over HTTPS."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervise.supervisor.api.store import Role
from tests.conftest import REPO, Daemon, start_daemon, stop_daemon, write_config
from tests.integration.api_helpers import Receiver, start_receiver
from tests.integration.test_api import make_tokens
from tests.integration.test_api_security import self_signed

CLIENTS = REPO / "examples" / "clients"


@dataclass
class Live:
    daemon: Daemon
    env: dict[str, str]
    receiver: Receiver
    cert: Path


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    folder = Path(tempfile.mkdtemp(prefix="sv-clients-", dir="/tmp"))
    receiver = start_receiver()
    cert, key = self_signed(folder)
    tls = {"http_tls_cert": str(cert), "http_tls_key": str(key)}
    config = write_config(folder, {}, http="127.0.0.1:0", allow_addresses=["127.0.0.1"], **tls)
    token = make_tokens(folder / "state", {"demo": (Role.OPERATOR, None)})["demo"]
    daemon = start_daemon(config)
    try:
        env = {
            **os.environ,
            "SUPERVISE_API": "https://" + daemon.client.call("ping")["http"],
            "SUPERVISE_TOKEN": token,
            "SUPERVISE_DELAY_S": "1",
            "SUPERVISE_NOTIFY_URL": receiver.url + "/done",
        }
        yield Live(daemon, env, receiver, cert)
    finally:
        stop_daemon(daemon)
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)


def calls(live: Live, path: str) -> int:
    return sum(1 for r in live.receiver.requests if r["path"] == path)


def test_the_curl_example_creates_a_task_follows_it_and_is_notified(live: Live) -> None:
    before = calls(live, "/done")
    result = subprocess.run(
        ["bash", str(CLIENTS / "api.sh"), live.receiver.url + "/from-curl"],
        env={**live.env, "SUPERVISE_CACERT": str(live.cert)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "state: succeeded" in result.stdout and "notify: sent" in result.stdout
    assert '"pointer":"/url"' in result.stdout.replace(" ", "")  # the refused request's problem+json
    assert calls(live, "/from-curl") == 1 and calls(live, "/done") == before + 1


def test_the_fetch_example_creates_a_task_follows_it_and_is_notified(live: Live) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is needed for the fetch example")
        pytest.skip("node is not installed")
    before = calls(live, "/done")
    result = subprocess.run(
        [node, str(CLIENTS / "api-fetch.mjs"), live.receiver.url + "/from-fetch"],
        env={**live.env, "NODE_EXTRA_CA_CERTS": str(live.cert)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "state succeeded" in result.stdout and "notify sent success" in result.stdout
    assert 'refused: [ "/url: scheme must be http or https' in result.stdout
    assert calls(live, "/from-fetch") == 1 and calls(live, "/done") == before + 1
