"""A service with `user` runs with that user's groups, home and an allow-listed environment (real workers)."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def test_a_worker_run_as_nobody_has_nobodys_groups_home_and_not_the_supervisors_secrets(
    daemon_factory: Callable[..., Daemon], short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SV_ONLY_IN_SUPERVISOR", "do-not-leak")  # the daemon inherits the test's environment
    nobody = pwd.getpwnam("nobody")
    short_dir.chmod(0o711)  # nobody may traverse it, not list it
    shared = short_dir / "shared"
    shared.mkdir(mode=0o755)
    target = shared / "root-group-file"
    target.write_text("")
    os.chown(target, 0, 0)
    target.chmod(0o660)  # root:root 0660: writable through gid 0 only
    script = (
        'echo "ID $(id -u) $(id -g) $(id -G)"; echo "HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL"; '
        'echo "SECRET=$(printenv SV_ONLY_IN_SUPERVISOR || echo absent) PORT=$PORT"; '
        f"if echo x >> {target}; then echo APPEND=allowed; else echo APPEND=denied; fi; echo DONE"
    )
    daemon_factory(
        {
            "who": {
                "command": ["sh", "-c", script],
                "user": "nobody",
                "cwd": "/",
                "restart": "never",
                "env": {"PORT": "8000"},
            }
        }
    )
    log = short_dir / "state" / "logs" / "who.log"
    text = wait_for(lambda: "DONE" in (t := log.read_text()) and t, timeout_s=15, what="the worker's output")

    expected_groups = sorted({nobody.pw_gid, *os.getgrouplist("nobody", nobody.pw_gid)})
    id_line = next(line for line in text.splitlines() if line.startswith("ID "))
    uid, gid, *groups = (int(v) for v in id_line.split()[1:])
    assert (uid, gid) == (nobody.pw_uid, nobody.pw_gid), id_line
    assert sorted(set(groups)) == expected_groups, (
        f"{id_line}; nobody's groups: {[grp.getgrgid(g).gr_name for g in expected_groups]}"
    )
    assert f"HOME={nobody.pw_dir} USER=nobody LOGNAME=nobody SHELL={nobody.pw_shell}" in text
    assert "SECRET=absent PORT=8000" in text
    assert "APPEND=denied" in text
    assert target.read_text() == ""
