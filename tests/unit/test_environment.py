"""The worker environment policy: an allow-list unless inherit_env, the user's identity variables, the service's env."""

from __future__ import annotations

import os
import pwd

import pytest

from supervise.supervisor.config.loader import parse_config
from supervise.supervisor.core.errors import ConfigError
from supervise.supervisor.daemon.account import Account
from supervise.supervisor.daemon.environment import EnvironCopy, base_environment, inherits

SUPERVISOR_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_TIME": "en_GB.UTF-8",
    "TZ": "UTC",
    "HOME": "/root",
    "USER": "root",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t",
    "DATABASE_URL": "postgresql://app:pw@db/app",
}


def test_a_worker_of_another_user_gets_only_the_allow_list_and_that_users_identity() -> None:
    nobody = pwd.getpwnam("nobody")

    env = base_environment(SUPERVISOR_ENV, inherit_env=None, user="nobody", service_env={"PORT": "8000"})

    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_TIME": "en_GB.UTF-8",
        "TZ": "UTC",
        "HOME": nobody.pw_dir,
        "USER": "nobody",
        "LOGNAME": "nobody",
        "SHELL": nobody.pw_shell,
        "PORT": "8000",
    }


def test_without_user_the_supervisors_environment_is_inherited_unless_told_otherwise() -> None:
    assert base_environment(SUPERVISOR_ENV, inherit_env=None, user=None, service_env={}) == SUPERVISOR_ENV
    env = base_environment(SUPERVISOR_ENV, inherit_env=False, user=None, service_env={"DATABASE_URL": "mine"})
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HOME" not in env
    assert env["DATABASE_URL"] == "mine"  # the service's env is always added


def test_inherit_env_true_with_a_user_keeps_everything_but_the_identity_is_the_users() -> None:
    env = base_environment(SUPERVISOR_ENV, inherit_env=True, user="nobody", service_env={})
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert (env["HOME"], env["USER"]) == (pwd.getpwnam("nobody").pw_dir, "nobody")


@pytest.mark.parametrize(
    ("inherit_env", "user", "expected"),
    [(None, None, True), (None, "nobody", False), (True, "nobody", True), (False, None, False)],
)
def test_inherits(inherit_env: bool | None, user: str | None, expected: bool) -> None:
    assert inherits(inherit_env, user) is expected


def test_an_account_has_the_users_primary_and_supplementary_groups() -> None:
    account = Account.lookup("nobody")
    entry = pwd.getpwnam("nobody")
    assert (account.uid, account.gid) == (entry.pw_uid, entry.pw_gid)
    assert entry.pw_gid in account.groups and 0 not in account.groups


def test_inherit_env_is_a_boolean_key() -> None:
    cfg = parse_config({"services": {"a": {"command": ["true"], "inherit_env": False}}})
    assert cfg.services["a"].inherit_env is False
    with pytest.raises(ConfigError, match="inherit_env: expected true or false"):
        parse_config({"services": {"a": {"command": ["true"], "inherit_env": "no"}}})


def test_the_environ_copy_follows_every_change_of_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    copy = EnvironCopy()
    assert copy.current() == dict(os.environ)
    monkeypatch.setenv("SUPERVISE_TEST_COPY", "one")
    assert copy.current()["SUPERVISE_TEST_COPY"] == "one"
    monkeypatch.setenv("SUPERVISE_TEST_COPY", "two\udcff")  # not UTF-8: kept as os.environ keeps it
    assert copy.current() == dict(os.environ)
    monkeypatch.delenv("SUPERVISE_TEST_COPY")
    assert "SUPERVISE_TEST_COPY" not in copy.current()
    assert copy.current() is copy.current()  # unchanged: not made again
