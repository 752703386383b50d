"""The state directory, logs/ and the files in them are the supervisor user's alone (real daemons and files)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from supervise.supervisor.core.errors import ConfigError
from supervise.supervisor.daemon.lock import prepare_state_dir
from supervise.supervisor.daemon.output import RotatingLog
from tests.conftest import Daemon, start_daemon, stop_daemon, wait_for, write_config

EX_CONFIG = 78
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs another user's files (root)")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def start(config: Path) -> subprocess.CompletedProcess[str]:
    """`supervise start CONFIG` that is expected to refuse (a start that does not refuse is stopped at 20 s)."""
    return subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "start", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


# -- F5: log files and logs/ -------------------------------------------------------------------------


def test_a_symlink_planted_as_a_log_file_is_neither_written_nor_shown(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    victim = short_dir / "victim"
    victim.write_text("SECRET-LINE\n")
    logs = short_dir / "state" / "logs"
    logs.mkdir(parents=True)
    (short_dir / "state").chmod(0o700)
    logs.chmod(0o700)
    (logs / "web.log").symlink_to(victim)

    d = daemon_factory({"web": {"command": ["sh", "-c", "echo from-web; exec sleep 1000"]}})

    wait_for(lambda: d.service("web")["log_write_errors"] > 0, what="the refused log open to be counted")
    assert victim.read_text() == "SECRET-LINE\n"
    shown = d.cli("logs", "web")
    assert "SECRET-LINE" not in shown.stdout + shown.stderr


def test_rotating_log_refuses_a_symlink_and_a_fifo_and_keeps_going(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (logs / "a.log").symlink_to(victim)
    os.mkfifo(logs / "b.log")

    for name in ("a", "b"):
        log = RotatingLog(logs / f"{name}.log", max_bytes=1000, backups=2)
        log.write(b"hello\n")  # must neither follow the link nor block on the fifo
        assert (log.write_errors, log.dropped_bytes) == (1, 6)
    assert victim.read_text() == ""


def test_a_log_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    log = RotatingLog(logs / "a.log", max_bytes=1000, backups=2)
    log.write(b"x")
    assert log.write_errors == 1 and not (logs / "a.log").exists()


def test_under_umask_000_everything_the_supervisor_creates_is_private(short_dir: Path) -> None:
    config = write_config(
        short_dir, {"job": {"command": ["sh", "-c", "echo ran"], "manual": True}, "web": {"command": ["sleep", "1000"]}}
    )
    old = os.umask(0)
    try:
        d = start_daemon(config)  # the daemon inherits the umask
    finally:
        os.umask(old)
    try:
        run_id = d.client.call("run", name="job")["run_id"]
        wait_for(
            lambda: any(
                r["run_id"] == run_id and r["state"] == "succeeded" for r in d.client.call("runs", name="job")["runs"]
            ),
            what="the run",
        )
        state = short_dir / "state"
        assert mode(state) == 0o700 and mode(state / "logs") == 0o700
        for name in ("history.db", "history.db-wal", "history.db-shm", "supervise.lock", "logs/job.log"):
            assert mode(state / name) == 0o600, f"{name} is {mode(state / name):o}"
    finally:
        stop_daemon(d)


# -- F6: the state directory --------------------------------------------------------------------------


def test_a_state_dir_that_is_not_exactly_0700_is_refused_naming_path_and_mode(short_dir: Path) -> None:
    state = short_dir / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    config = write_config(short_dir, {"web": {"command": ["sleep", "1000"]}})

    result = start(config)

    assert result.returncode == EX_CONFIG, result.stderr
    assert f"directory {state} has mode 0755; it must be 0700 (run: chmod 700 {state})" in result.stderr
    assert not (state / "control.sock").exists()


def test_a_new_state_dir_is_made_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o777)
    try:
        prepare_state_dir(tmp_path / "a" / "state")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a" / "state") == 0o700 and mode(tmp_path / "a" / "state" / "logs") == 0o700


@as_root
def test_a_state_dir_symlink_owned_by_another_user_is_refused(short_dir: Path) -> None:
    victim = short_dir / "victims-folder"
    victim.mkdir(mode=0o700)
    link = short_dir / "state"
    link.symlink_to(victim)
    os.lchown(link, 65534, 65534)  # planted by nobody
    config = write_config(short_dir, {"web": {"command": ["sleep", "1000"]}})

    result = start(config)

    assert result.returncode == EX_CONFIG, result.stderr
    assert f"{link} is a symlink owned by uid 65534" in result.stderr
    assert list(victim.iterdir()) == []  # no lock file, no socket written through the link


def test_a_state_dir_symlink_of_our_own_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (tmp_path / "state").symlink_to(real)
    real.mkdir(mode=0o700)
    prepare_state_dir(tmp_path / "state")
    assert (real / "logs").is_dir()


@as_root
def test_a_logs_folder_owned_by_another_user_is_refused_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "logs").mkdir(mode=0o700)
    os.chown(state / "logs", 65534, 65534)
    with pytest.raises(ConfigError, match=r"logs belongs to uid 65534, not to the supervisor's user \(uid 0\)"):
        prepare_state_dir(state)


def test_an_existing_history_database_is_made_0600(tmp_path: Path) -> None:
    from supervise.supervisor.store.sqlite import SqliteStore

    path = tmp_path / "history.db"
    with SqliteStore(path):
        pass
    path.chmod(0o644)
    with SqliteStore(path):
        assert mode(path) == 0o600
        assert all(mode(p) == 0o600 for p in tmp_path.glob("history.db-*"))
