"""rlimits, nice, oom_score_adjust, group and supplementary_groups, as a real worker sees them."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from supervise.supervisor.cgroups import cgroup_problem
from supervise.supervisor.config.loader import ConfigError, parse_config
from tests.conftest import Daemon, wait_for


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


needs_groups = pytest.mark.skipif(
    os.geteuid() != 0 or not (group_exists("daemon") and group_exists("adm")),
    reason="switching groups needs root and the groups daemon and adm",
)

# "$$" is the config's escape of "$": the shell sees "$$", its pid.
REPORT = (
    'echo "NOFILE $(ulimit -Sn) $(ulimit -Hn) CORE $(ulimit -c)"; '
    'echo "NPROC $(grep "Max processes" /proc/self/limits | tr -s " " | cut -d" " -f3,4)"; '
    'echo "NICE $(cut -d" " -f19 /proc/self/stat) OOM $(cat /proc/self/oom_score_adj)"; '
    'echo "ID $(id -u) $(id -g) $(id -G)"; echo "PID $$$$"; echo DONE; exec sleep 1000'
)


def report(short_dir: Path, name: str) -> dict[str, list[str]]:
    log = short_dir / "state" / "logs" / f"{name}.log"
    text = wait_for(lambda: "DONE" in (t := log.read_text() if log.exists() else "") and t, what="the worker's report")
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line and line != "DONE"}


def test_rlimits_nice_and_oom_score_adjust_are_set_in_the_worker(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    d = daemon_factory(
        {
            "lim": {
                "command": ["sh", "-c", REPORT],
                "rlimits": {"nofile": 4096, "core": 0, "nproc": 2000},
                "nice": 7,
                "oom_score_adjust": 500,
            }
        }
    )
    pid = d.wait_running_pid("lim")
    seen = report(short_dir, "lim")
    assert seen["NOFILE"] == ["4096", "4096", "CORE", "0"]
    assert seen["NPROC"] == ["2000", "2000"]
    assert seen["NICE"] == ["7", "OOM", "500"]
    assert seen["PID"] == [str(pid)]  # the wrapper exec'd the command: the pid the supervisor watches


@needs_groups
def test_group_and_supplementary_groups_replace_the_users(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    primary, extra = grp.getgrnam("daemon"), grp.getgrnam("adm")
    daemon_factory(
        {
            "who": {
                "command": ["sh", "-c", REPORT],
                "user": "nobody",
                "group": "daemon",
                "supplementary_groups": ["adm"],
                "cwd": "/",
                "rlimits": {"nofile": 1024},  # through the wrapper, which switches identity after the limits
            }
        }
    )
    seen = report(short_dir, "who")
    uid, gid, *groups = (int(v) for v in seen["ID"])
    assert (uid, gid) == (nobody.pw_uid, primary.gr_gid)
    assert set(groups) == {primary.gr_gid, extra.gr_gid}


@needs_groups
def test_group_without_the_wrapper(daemon_factory: Callable[..., Daemon], short_dir: Path) -> None:
    primary = grp.getgrnam("daemon")
    daemon_factory({"g": {"command": ["sh", "-c", REPORT], "group": "daemon", "supplementary_groups": []}})
    uid, gid, *groups = (int(v) for v in report(short_dir, "g")["ID"])
    assert (uid, gid) == (os.geteuid(), primary.gr_gid)
    assert set(groups) == {primary.gr_gid}


def test_a_missing_executable_with_limits_is_still_a_spawn_failure(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"ghost": {"command": ["/nonexistent/bin/ghost"], "rlimits": {"core": 0}, "max_restarts": 0}})
    svc = d.wait_state("ghost", "FATAL")
    assert svc["last_exit"]["cause"] == "spawn_failed"
    assert "No such file or directory: /nonexistent/bin/ghost" in svc["last_error"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("rlimits", {"files": 10}, 'unknown resource "files"'),
        ("rlimits", {"nofile": -1}, 'nofile: expected an integer >= 0 or "infinity"'),
        ("nice", 20, "expected an integer from -20 to 19"),
        ("oom_score_adjust", 2000, "expected an integer from -1000 to 1000"),
        ("group", "no-such-group-x", 'unknown group "no-such-group-x"'),
        ("supplementary_groups", "adm", "expected a list of group names"),
        ("cpu_quota", "fast", 'expected a percentage of one CPU like "50%"'),
    ],
)
def test_bad_limit_values_are_refused_naming_the_key(tmp_path: Path, key: str, value: object, expected: str) -> None:
    data = {"supervisor": {"state_dir": str(tmp_path)}, "services": {"s": {"command": ["true"], key: value}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert f"services.s.{key}" in str(caught.value) and expected in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "controller"), [("cpu_quota", "50%", "cpu"), ("memory_max", "64MiB", "memory")]
)
def test_cgroup_limits_are_refused_with_the_reason_where_cgroup_v2_is_not_delegated(
    tmp_path: Path, key: str, value: str, controller: str
) -> None:
    problem = cgroup_problem(controller)
    if problem is None:
        pytest.skip("cgroup v2 is delegated here: the limit is accepted")
    data = {"supervisor": {"state_dir": str(tmp_path)}, "services": {"s": {"command": ["true"], key: value}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert f"services.s.{key}" in str(caught.value) and problem in str(caught.value)
    assert "cgroup v2" in problem or "delegated" in problem
