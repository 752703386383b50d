"""`reload` of a config the parser cannot handle answers a config error and changes nothing (real daemon)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from supervise.protocol.errors import RemoteError
from tests.conftest import Daemon


def test_reload_of_a_deeply_nested_config_is_a_config_error_not_internal(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"web": {"command": ["sleep", "1000"]}})
    pid = d.wait_running_pid("web")
    d.config.write_text(
        d.config.read_text() + '\n[services.deep]\ncommand = ["true"]\nx = ' + "[" * 3000 + "]" * 3000 + "\n"
    )

    with pytest.raises(RemoteError) as caught:
        d.client.call("reload")

    assert caught.value.code == "bad_args", caught.value
    assert "nested more than 32 levels deep" in caught.value.message
    assert d.service("web")["pid"] == pid
    assert d.client.call("ping")["pid"] == d.pid
