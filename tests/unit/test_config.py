"""The config edge: TOML files in, frozen dataclasses or one ConfigError listing every problem out."""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import pytest

from supervise.supervisor.config.loader import (
    SERVICE_KEYS,
    Config,
    ConfigDiff,
    RestartMode,
    ServiceConfig,
    SupervisorConfig,
    diff_configs,
    load_config,
    parse_config,
    parse_service,
)
from supervise.supervisor.config.notify import NotifyRule
from supervise.supervisor.core.errors import ConfigError, ConfigProblem
from supervise.supervisor.core.restart import ExitStatuses


def write(folder: Path, text: str, name: str = "supervise.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[str]:
    """Every problem `load_config` reports for the file, rendered with the bare file name."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [p.render(path.name) for p in caught.value.problems]


def problem_of(folder: Path, service_lines: str) -> str:
    """The one problem in a `[services.web]` table made of `service_lines`."""
    path = write(folder, "[services.web]\n" + textwrap.dedent(service_lines))
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


# --- valid configs -------------------------------------------------------------------


def test_a_config_with_every_key_fills_every_field(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    user = pwd.getpwuid(os.geteuid()).pw_name
    path = write(
        tmp_path,
        f"""
        [supervisor]
        state_dir = "run"
        control = "ipc://run/ctl.sock"
        events = "ipc:///tmp/supervise-events.sock"
        shutdown_timeout = "45s"
        log_max_bytes = "20MiB"
        log_backups = 5
        http = "127.0.0.1:9180"
        history_keep = 50
        history_max_age = "7d"
        store = "sqlite:///var/lib/supervise/history.db"

        [services.web]
        command = "sh -c 'exec sleep 1000'"
        critical = true
        autostart = false
        restart = "always"
        max_restarts = 3
        restart_window = "2m"
        backoff = "500ms"
        backoff_max = "30s"
        stable_after = "5m"
        start_timeout = "3s"
        heartbeat_interval = "1s"
        heartbeat_timeout = "4s"
        stop_signal = "INT"
        stop_timeout = "20s"
        hang_signal = "ABRT"
        success_exit_codes = [3, "USR2"]
        restart_prevent_exit_codes = [75]
        restart_force_exit_codes = ["SIGHUP", 9]
        type = "notify"
        env = {{ PORT = 8080, DEBUG = true, NAME = "web", RATIO = 0.5 }}
        cwd = "app"
        user = "{user}"
        inherit_env = true
        umask = "027"
        max_memory = "300MB"
        requires = ["report"]
        processes = 2
        notify = {{ on = ["failure"] }}
        placement = "every"
        rlimits = {{ nofile = 4096, core = 0, stack = "infinity" }}
        nice = 5
        oom_score_adjust = 100
        group = "daemon"
        supplementary_groups = ["adm"]
        sockets = {{ http = "tcp://127.0.0.1:8080", admin = "unix:/run/app/admin.sock" }}
        before_start = ["./migrate", "--check"]
        after_start = "curl -fsS http://127.0.0.1:8080/warm"
        before_stop = ["./drain"]
        after_stop = ["./notify", "stopped"]
        on_fatal = ["./page", "oncall"]
        hook_timeout = "5s"

        [services.report]
        target = "reports.jobs:nightly"
        watchdog = "30s"
        """,
    )

    config = load_config(path)

    assert config == Config(
        source=str(path),
        base_dir=tmp_path,
        supervisor=SupervisorConfig(
            state_dir=tmp_path / "run",
            control_endpoint=f"ipc://{tmp_path}/run/ctl.sock",
            workers_endpoint=f"ipc://{tmp_path}/run/workers.sock",
            events_endpoint="ipc:///tmp/supervise-events.sock",
            shutdown_timeout_ms=45_000,
            log_max_bytes=20 * 1024**2,
            log_backups=5,
            http="127.0.0.1:9180",
            history_keep=50,
            history_max_age_ms=7 * 86_400_000,
            store="sqlite:///var/lib/supervise/history.db",
        ),
        services=MappingProxyType(
            {
                "web": ServiceConfig(
                    name="web",
                    command=("sh", "-c", "exec sleep 1000"),
                    target=None,
                    critical=True,
                    autostart=False,
                    restart=RestartMode.ALWAYS,
                    max_restarts=3,
                    restart_window_ms=120_000,
                    backoff_ms=500,
                    backoff_max_ms=30_000,
                    stable_after_ms=300_000,
                    start_timeout_ms=3_000,
                    heartbeat_interval_ms=1_000,
                    heartbeat_timeout_ms=4_000,
                    stop_signal=signal.SIGINT,
                    stop_timeout_ms=20_000,
                    hang_signal=signal.SIGABRT,
                    success_exit_codes=ExitStatuses(frozenset({3}), frozenset({signal.SIGUSR2})),
                    restart_prevent_exit_codes=ExitStatuses(frozenset({75})),
                    restart_force_exit_codes=ExitStatuses(frozenset({9}), frozenset({signal.SIGHUP})),
                    sd_notify=True,
                    env={"PORT": "8080", "DEBUG": "true", "NAME": "web", "RATIO": "0.5"},
                    cwd=tmp_path / "app",
                    user=user,
                    inherit_env=True,
                    umask=0o027,
                    max_memory_bytes=300_000_000,
                    requires=("report",),
                    processes=2,
                    notify=NotifyRule(on=("failure",)),
                    rlimits={"nofile": 4096, "core": 0, "stack": -1},
                    nice=5,
                    oom_score_adjust=100,
                    group="daemon",
                    supplementary_groups=("adm",),
                    sockets={"http": "tcp://127.0.0.1:8080", "admin": "unix:/run/app/admin.sock"},
                    before_start=("./migrate", "--check"),
                    after_start=("curl", "-fsS", "http://127.0.0.1:8080/warm"),
                    before_stop=("./drain",),
                    after_stop=("./notify", "stopped"),
                    on_fatal=("./page", "oncall"),
                    hook_timeout_ms=5_000,
                ),
                "report": ServiceConfig.for_target(
                    "report", "reports.jobs:nightly", cwd=tmp_path, watchdog_timeout_ms=30_000
                ),
            }
        ),
    )
    assert list(config.services) == ["web", "report"]  # file order
    assert not config.services["web"].is_python and config.services["report"].is_python


def test_every_service_key_is_covered_by_the_full_example() -> None:
    # Guards the test above: a new key in SERVICE_KEYS must be added to it.
    assert set(SERVICE_KEYS) == {
        "command", "target", "critical", "autostart", "restart", "max_restarts", "restart_window",
        "backoff", "backoff_max", "stable_after", "start_timeout", "heartbeat_interval",
        "heartbeat_timeout", "stop_signal", "stop_timeout", "env", "cwd", "user", "inherit_env", "umask", "max_memory",
        "requires", "processes", "watchdog", "hang_signal", "success_exit_codes", "restart_prevent_exit_codes",
        "restart_force_exit_codes", "type", "notify", "placement",
        "rlimits", "nice", "oom_score_adjust", "group", "supplementary_groups", "sockets",
        "before_start", "after_start", "before_stop", "after_stop", "on_fatal", "hook_timeout",
        # machine-dependent (cgroup v2 delegated), so in tests/integration/test_limits.py instead:
        "cpu_quota", "memory_max",
    }  # fmt: skip


def test_unset_keys_take_their_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.web]\ncommand = ["sh"]\n'))

    web = config.services["web"]
    assert (web.critical, web.autostart, web.restart, web.max_restarts) == (False, True, RestartMode.ON_FAILURE, 5)
    assert (web.restart_window_ms, web.backoff_ms, web.backoff_max_ms, web.stable_after_ms) == (
        60_000,
        1_000,
        60_000,
        60_000,
    )
    assert (web.heartbeat_interval_ms, web.heartbeat_timeout_ms) == (2_000, 10_000)
    assert (web.stop_signal, web.stop_timeout_ms) == (signal.SIGTERM, 10_000)
    assert (web.user, web.umask, web.max_memory_bytes, web.origin) == (None, None, None, "config")
    assert web.env == {} and isinstance(web.env, MappingProxyType)
    assert web.cwd == tmp_path
    assert config.supervisor == SupervisorConfig(
        state_dir=tmp_path / ".supervise",
        control_endpoint=f"ipc://{tmp_path}/.supervise/control.sock",
        workers_endpoint=f"ipc://{tmp_path}/.supervise/workers.sock",
        events_endpoint=f"ipc://{tmp_path}/.supervise/events.sock",
        shutdown_timeout_ms=30_000,
        log_max_bytes=10 * 1024 * 1024,
        log_backups=3,
        http=None,
    )


def test_start_timeout_defaults_to_1s_for_commands_and_30s_for_python_targets(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.cmd]\ncommand = "sh"\n[services.py]\ntarget = "pkg.mod:main"\n'))

    assert config.services["cmd"].start_timeout_ms == 1_000
    assert config.services["py"].start_timeout_ms == 30_000


def test_a_config_without_services_is_an_empty_supervisor(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "# nothing yet\n"))

    assert config.services == {}
    assert config.supervisor.state_dir == tmp_path / ".supervise"


def test_relative_paths_resolve_against_the_config_folder_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc" / "app").mkdir(parents=True)
    path = write(
        tmp_path / "etc",
        '[supervisor]\nstate_dir = "../var/state"\n[services.web]\ncommand = "sh"\ncwd = "app"\n',
    )
    monkeypatch.chdir("/")

    config = load_config(path)

    assert config.base_dir == tmp_path / "etc"
    assert config.supervisor.state_dir == tmp_path / "var" / "state"  # normalised, absolute
    assert config.supervisor.control_endpoint == f"ipc://{tmp_path}/var/state/control.sock"
    assert config.services["web"].cwd == tmp_path / "etc" / "app"


def test_a_config_given_by_a_relative_path_gets_an_absolute_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[services.web]\ncommand = "sh"\n')
    monkeypatch.chdir(tmp_path)

    config = load_config("supervise.toml")

    assert config.source == "supervise.toml"
    assert config.base_dir == tmp_path
    assert config.services["web"].cwd == tmp_path


def test_cwd_keeps_symlinks_so_a_deploy_switch_is_followed(tmp_path: Path) -> None:
    (tmp_path / "releases" / "42").mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "42")

    config = load_config(write(tmp_path, '[services.web]\ncommand = "sh"\ncwd = "current"\n'))

    assert config.services["web"].cwd == tmp_path / "current"


def test_a_critical_service_with_restart_never_is_restarted_on_failure(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.db]\ncommand = "sh"\ncritical = true\nrestart = "never"\n'))

    assert config.services["db"].restart is RestartMode.ON_FAILURE


def test_a_non_critical_service_may_never_restart(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.db]\ncommand = "sh"\nrestart = "never"\n'))

    assert config.services["db"].restart is RestartMode.NEVER


@pytest.mark.parametrize(
    ("given", "backoff_max_ms", "heartbeat_timeout_ms"),
    [
        ('backoff = "2m"', 120_000, 10_000),
        ('heartbeat_interval = "5s"', 60_000, 25_000),
        ('heartbeat_interval = "500ms"', 60_000, 10_000),
    ],
)
def test_derived_defaults_follow_the_keys_they_depend_on(
    tmp_path: Path, given: str, backoff_max_ms: int, heartbeat_timeout_ms: int
) -> None:
    web = load_config(write(tmp_path, f'[services.web]\ncommand = "sh"\n{given}\n')).services["web"]

    assert (web.backoff_max_ms, web.heartbeat_timeout_ms) == (backoff_max_ms, heartbeat_timeout_ms)


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"TERM"', signal.SIGTERM), ('"SIGHUP"', signal.SIGHUP), ('"usr1"', signal.SIGUSR1), ("9", signal.SIGKILL)],
)
def test_stop_signal_takes_names_with_or_without_sig_and_numbers(tmp_path: Path, value: str, expected: int) -> None:
    web = load_config(write(tmp_path, f'[services.web]\ncommand = "sh"\nstop_signal = {value}\n')).services["web"]

    assert web.stop_signal == expected


@pytest.mark.parametrize(("value", "expected"), [('"022"', 0o022), ('"0o077"', 0o077), ("0o027", 0o027), ("0", 0)])
def test_umask_takes_octal_strings_and_integers(tmp_path: Path, value: str, expected: int) -> None:
    web = load_config(write(tmp_path, f'[services.web]\ncommand = "sh"\numask = {value}\n')).services["web"]

    assert web.umask == expected


def test_a_command_with_a_path_is_found_relative_to_the_services_cwd(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    script = tmp_path / "app" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)

    web = load_config(write(tmp_path, '[services.web]\ncommand = "./run.sh --port 80"\ncwd = "app"\n')).services["web"]

    assert web.command == ("./run.sh", "--port", "80")


def test_the_service_env_path_is_searched_for_the_executable(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mytool").write_text("#!/bin/sh\n")
    (bin_dir / "mytool").chmod(0o755)

    web = load_config(
        write(tmp_path, f'[services.web]\ncommand = "mytool"\nenv = {{ PATH = "{bin_dir}" }}\n')
    ).services["web"]

    assert web.command == ("mytool",)


def test_parsed_configs_are_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.web]\ncommand = "sh"\nenv = { A = "1" }\n'))

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.services["web"].backoff_ms = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.services["web"].env["A"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.services["other"] = config.services["web"]  # type: ignore[index]


def test_parse_config_takes_a_dict_built_in_code(tmp_path: Path) -> None:
    config = parse_config(
        {"services": {"web": {"command": ["sh", "-c", "true"], "stop_timeout": 2.5}}}, base_dir=tmp_path
    )

    assert config.source == "<dict>"
    assert config.services["web"].stop_timeout_ms == 2_500
    assert config.supervisor.state_dir == tmp_path / ".supervise"


def test_parse_service_validates_one_table_for_the_runtime_add_command(tmp_path: Path) -> None:
    web = parse_service("web", {"target": "pkg.mod:Web"}, base_dir=tmp_path)

    assert web == ServiceConfig.for_target("web", "pkg.mod:Web", cwd=tmp_path)


def test_parse_service_reports_problems_under_its_key_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_service("web", {"target": "pkg.mod:Web", "backof": "1s"}, base_dir=tmp_path, key_prefix="add")

    assert str(caught.value) == '<dict>: add.web.backof: unknown key; did you mean "backoff"?'


def test_for_command_builds_an_unvalidated_service_with_defaults() -> None:
    web = ServiceConfig.for_command("web", ["sh", "-c", "true"], env={"A": "1"}, backoff_ms=0)

    assert web.command == ("sh", "-c", "true")
    assert web.target is None and not web.is_python
    assert web.start_timeout_ms == 1_000
    assert isinstance(web.env, MappingProxyType) and web.env == {"A": "1"}
    assert web.backoff_ms == 0
    assert web.cwd == Path.cwd()


# --- problems ------------------------------------------------------------------------


def test_a_missing_file_is_one_problem_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "supervise.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"cannot read config {path}: No such file or directory"
    assert caught.value.problems == [ConfigProblem("", f"cannot read config {path}: No such file or directory")]


def test_a_directory_is_not_a_readable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)

    assert str(caught.value) == f"cannot read config {tmp_path}: Is a directory"


def test_a_toml_syntax_error_carries_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[services.web]\ncommand = "sh"\nbackoff "1s"\n')

    assert problems(path) == ["supervise.toml:3:9: invalid TOML: expected '=' after a key in a key/value pair"]
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.problems[0].line, caught.value.problems[0].column) == (3, 9)


def test_a_toml_error_at_the_end_of_the_file_points_at_its_last_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[services.web]\ncommand = "sh')

    assert problems(path) == ["supervise.toml:2:14: invalid TOML: unterminated string"]


def test_a_file_that_is_not_utf8_is_refused_with_the_place_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "supervise.toml"
    path.write_bytes(b'# ok\ncommand = "caf\xe9"\n')

    assert problems(path) == ["supervise.toml:2:15: invalid TOML: not UTF-8 text (byte 0xe9)"]


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [services.web]
        command = "sh"
        max_restarts = "three"

        [services.api]
        target = "api.main:app"
        restart = "allways"

        [supervisor]
        shutdown_timeout = "10 sec"
        """,
    )

    assert problems(path) == [
        'supervise.toml:3:1: services.web.max_restarts: expected an integer >= 0, got "three"',
        'supervise.toml:7:1: services.api.restart: expected one of "always", "on-success", '
        '"on-failure", "on-abnormal", "on-abort", "on-watchdog", "never"; got "allways"',
        'supervise.toml:10:1: supervisor.shutdown_timeout: invalid duration "10 sec" (use 500ms, 10s, 5m, 1h)',
    ]


def test_the_error_message_lists_every_problem_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[services.web]\ncommand = "sh"\ncritical = "yes"\nautostart = 1\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value).splitlines() == [
        f'{path}:3:1: services.web.critical: expected true or false, got "yes"',
        f"{path}:4:1: services.web.autostart: expected true or false, got 1",
    ]


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            'command = "sh"\nrestart_polcy = "always"',
            '3:1: services.web.restart_polcy: unknown key; did you mean "restart"?',
        ),
        (
            'command = "sh"\n  max_restart = 1',
            '3:3: services.web.max_restart: unknown key; did you mean "max_restarts"?',
        ),
        ('command = "sh"\nzzz = 1', "3:1: services.web.zzz: unknown key"),
        ('command = "sh"\nevry = "5m"', '3:1: services.web.evry: unknown key; did you mean "every"?'),
    ],
    ids=["misspelt", "indented", "no-suggestion", "scheduling-key-typo"],
)
def test_unknown_service_keys_are_errors_with_a_suggestion(tmp_path: Path, lines: str, problem: str) -> None:
    assert problem_of(tmp_path, lines) == f"supervise.toml:{problem}"


def test_unknown_top_level_and_supervisor_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[supervisor]\nstate_dri = "s"\n[service.web]\ncommand = "sh"\n')

    assert problems(path) == [
        'supervise.toml:2:1: supervisor.state_dri: unknown key; did you mean "state_dir"?',
        'supervise.toml:3:1: service: unknown key; did you mean "services"?',
    ]


WRONG_VALUES = [
    ('type = "forking"', 'type: expected "simple" or "notify", got "forking"'),
    (
        'type = "notify"\nstart_timeout = "0s"',
        'start_timeout: must be > 0 for type = "notify" (the time it has to send READY=1)',
    ),
    (
        'success_exit_codes = "3"',
        'success_exit_codes: expected a list of exit codes and signal names like [3, 75, "TERM"], got "3"',
    ),
    (
        "success_exit_codes = [256]",
        'success_exit_codes: expected exit codes 0-255 and signal names like "TERM", got 256',
    ),
    (
        'restart_prevent_exit_codes = ["NOPE"]',
        'restart_prevent_exit_codes: expected exit codes 0-255 and signal names like "TERM", got "NOPE"',
    ),
    (
        'restart_prevent_exit_codes = [3, "TERM"]\nrestart_force_exit_codes = [3, "SIGTERM", 4]',
        "restart_force_exit_codes: 3, SIGTERM also in restart_prevent_exit_codes: a status prevents "
        "or forces a restart, not both",
    ),
    ("max_restarts = -1", "max_restarts: expected an integer >= 0, got -1"),
    ("max_restarts = 2.5", "max_restarts: expected an integer >= 0, got 2.5"),
    ("max_restarts = true", "max_restarts: expected an integer >= 0, got true"),
    ('critical = "true"', 'critical: expected true or false, got "true"'),
    ("stop_timeout = [10]", 'stop_timeout: expected a duration like "10s", got list'),
    ('stop_timeout = "10 sec"', 'stop_timeout: invalid duration "10 sec" (use 500ms, 10s, 5m, 1h)'),
    ('stop_timeout = "0s"', 'stop_timeout: expected a duration > 0, got "0s"'),
    ('backoff = "-1s"', 'backoff: expected a duration >= 0, got "-1s"'),
    (
        'restart = "allways"',
        'restart: expected one of "always", "on-success", "on-failure", "on-abnormal", "on-abort", '
        '"on-watchdog", "never"; got "allways"',
    ),
    (
        'max_memory = "300 bananas"',
        'max_memory: invalid size "300 bananas" (use 512KiB, 300MB, 1.5GiB or a number of bytes)',
    ),
    ("max_memory = 0", "max_memory: expected a size > 0, got 0"),
    (
        'stop_signal = "STOP"',
        'stop_signal: expected a signal name ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL", '
        '"ABRT") or number, got "STOP"',
    ),
    ('umask = "999"', 'umask: expected an octal umask like "022" or 0o022, got "999"'),
    ("umask = 0o1000", 'umask: expected an octal umask like "022" or 0o022, got 512'),
    ("env = [1]", "env: expected a table of strings, got list"),
    ("env = { PORT = [80] }", "env.PORT: expected a string, number or boolean, got list"),
    (
        'heartbeat_interval = "2s"\nheartbeat_timeout = "1s"',
        "heartbeat_timeout: must be > heartbeat_interval (2s), got 1s",
    ),
    ('heartbeat_timeout = "2s"', "heartbeat_timeout: must be > heartbeat_interval (2s), got 2s"),
    ('backoff = "5s"\nbackoff_max = "1s"', "backoff_max: must be >= backoff (5s), got 1s"),
]


@pytest.mark.parametrize(
    ("lines", "problem"), WRONG_VALUES, ids=[f"{w[1].split(':')[0]}-{i}" for i, w in enumerate(WRONG_VALUES)]
)
def test_wrong_values_are_reported_by_key_path_with_what_was_expected(tmp_path: Path, lines: str, problem: str) -> None:
    found = problem_of(tmp_path, 'command = "sh"\n' + lines)

    line = 2 + lines.count("\n") + 1
    assert found.endswith(f"services.web.{problem}")
    assert found.startswith(f"supervise.toml:{line}:")


def test_a_service_needs_a_command_or_a_target(tmp_path: Path) -> None:
    assert problem_of(tmp_path, "critical = true") == (
        'supervise.toml:1:1: services.web: set exactly one of command (an executable) or target ("pkg.module:function")'
    )


def test_a_service_cannot_have_both_a_command_and_a_target(tmp_path: Path) -> None:
    assert problem_of(tmp_path, 'command = "sh"\ntarget = "a.b:c"') == (
        'supervise.toml:1:1: services.web: set exactly one of command (an executable) or target ("pkg.module:function")'
    )


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ('""', "must be a non-empty list or string"),
        ("[]", "must be a non-empty list or string"),
        ('"   "', "must be a non-empty list or string"),
        ("42", "must be a non-empty list or string, got integer"),
        ('["sh", 1]', "expected a list of strings, got 1 at index 1"),
        ('"sh -c \'oops"', 'cannot split "sh -c \'oops" into arguments: no closing quotation'),
    ],
)
def test_a_command_must_be_a_non_empty_list_or_string(tmp_path: Path, command: str, problem: str) -> None:
    assert problem_of(tmp_path, f"command = {command}") == f"supervise.toml:2:1: services.web.command: {problem}"


def warnings_of(path: Path) -> list[str]:
    """The warnings of a config that loads, rendered with the bare file name."""
    return [p.render(path.name) for p in load_config(path).warnings]


SPAWN_WARNING = "; the service will fail to spawn (cause spawn_failed) until that is fixed"


def test_an_executable_missing_from_path_is_a_warning_with_the_path_searched(tmp_path: Path) -> None:
    path = write(tmp_path, '[services.web]\ncommand = "gunicron app:wsgi"\nenv = { PATH = "/usr/bin:/bin" }\n')

    assert warnings_of(path) == [
        'supervise.toml:2:1: services.web.command: executable "gunicron" not found on PATH=/usr/bin:/bin'
        + SPAWN_WARNING
    ]


def test_an_executable_missing_from_the_supervisors_path_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    path = write(tmp_path, '[services.web]\ncommand = ["gunicron"]\n')

    assert warnings_of(path) == [
        f'supervise.toml:2:1: services.web.command: executable "gunicron" not found on PATH={tmp_path}' + SPAWN_WARNING
    ]


def test_an_executable_path_that_does_not_exist_or_cannot_run_is_a_warning_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    path = write(
        tmp_path,
        """
        [services.a]
        command = "./missing.sh"
        [services.b]
        command = "./notes.txt"
        [services.c]
        command = "/"
        [services.ok]
        command = "sh"
        """,
    )

    assert list(load_config(path).services) == ["a", "b", "c", "ok"]
    assert warnings_of(path) == [
        f'supervise.toml:2:1: services.a.command: executable "./missing.sh" ({tmp_path}/missing.sh) does not exist'
        + SPAWN_WARNING,
        f'supervise.toml:4:1: services.b.command: "./notes.txt" ({tmp_path}/notes.txt) is not an executable file'
        + SPAWN_WARNING,
        'supervise.toml:6:1: services.c.command: "/" is not an executable file' + SPAWN_WARNING,
    ]


def test_one_service_alone_gets_a_missing_executable_as_an_error_unless_warnings_are_collected(tmp_path: Path) -> None:
    table = {"command": ["/nonexistent/bin/ghost"]}
    with pytest.raises(ConfigError, match='services.ghost.command: executable "/nonexistent/bin/ghost" does not exist'):
        parse_service("ghost", table, base_dir=tmp_path)
    found: list[ConfigProblem] = []
    service = parse_service("ghost", table, base_dir=tmp_path, warnings=found)
    assert service.command == ("/nonexistent/bin/ghost",)
    assert [p.key for p in found] == ["services.ghost.command"]


@pytest.mark.parametrize("target", ['"app"', '"app:"', '":main"', '"my-app.main:run"', '"app.main:run()"', "3"])
def test_a_target_must_look_like_module_colon_attribute(tmp_path: Path, target: str) -> None:
    assert problem_of(tmp_path, f"target = {target}") == (
        f'supervise.toml:2:1: services.web.target: expected "package.module:attribute" or '
        f'"package.module@registered-job", got {target}'
    )


def test_a_target_is_not_imported_at_config_time(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[services.web]\ntarget = "no_such_package_xyz.mod:Service.run"\n'))

    assert config.services["web"].target == "no_such_package_xyz.mod:Service.run"
    assert "no_such_package_xyz" not in sys.modules


@pytest.mark.parametrize(
    ("name", "shown"),
    [("web/1", '"web/1"'), ("", '""'), ("Web", "Web"), ("1web", "1web"), ("-web", "-web"), ("w" * 64, "w" * 64)],
    ids=["slash", "empty", "upper", "digit-first", "dash-first", "64-long"],
)
def test_service_names_must_be_short_lowercase_identifiers(tmp_path: Path, name: str, shown: str) -> None:
    path = write(tmp_path, f'[services."{name}"]\ncommand = "sh"\n')

    # The key path quotes a name only where TOML would need quotes.
    assert problems(path) == [f"supervise.toml:1:1: services.{shown}: names must match [a-z][a-z0-9_-]{{0,62}}"]


@pytest.mark.parametrize(
    "name", ["web", "w", "web-1", "api_v2", "w" * 63], ids=["web", "w", "web-1", "api_v2", "63-long"]
)
def test_good_service_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert name in load_config(write(tmp_path, f'[services.{name}]\ncommand = "sh"\n')).services


def test_a_missing_cwd_is_reported_with_its_absolute_path(tmp_path: Path) -> None:
    assert problem_of(tmp_path, 'command = "sh"\ncwd = "srv/app"') == (
        f"supervise.toml:3:1: services.web.cwd: directory {tmp_path}/srv/app does not exist"
    )


def test_a_cwd_that_is_a_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    assert problem_of(tmp_path, 'command = "sh"\ncwd = "file"') == (
        f"supervise.toml:3:1: services.web.cwd: {tmp_path}/file is not a directory"
    )


def test_an_unknown_user_is_reported(tmp_path: Path) -> None:
    assert problem_of(tmp_path, 'command = "sh"\nuser = "no-such-user-xyz"') == (
        'supervise.toml:3:1: services.web.user: unknown user "no-such-user-xyz"'
    )


@contextmanager
def effective_user(name: str) -> Iterator[None]:
    """Run the block with the effective uid of `name` (only root can), then return to root."""
    os.seteuid(pwd.getpwnam(name).pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_switching_user_requires_running_as_root(tmp_path: Path) -> None:
    table = {"command": ["sh"], "user": "root"}
    if os.geteuid() == 0:
        with effective_user("nobody"), pytest.raises(ConfigError) as caught:
            parse_service("web", table, base_dir=Path("/"))
        me = "nobody"
    else:
        with pytest.raises(ConfigError) as caught:
            parse_service("web", table, base_dir=Path("/"))
        me = pwd.getpwuid(os.geteuid()).pw_name

    assert caught.value.problems == [
        ConfigProblem("services.web.user", f'user= requires running as root (supervise runs as "{me}")')
    ]


def test_the_current_user_may_be_named_without_root(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name

    assert parse_service("web", {"command": ["sh"], "user": me}, base_dir=tmp_path).user == me


def test_a_tcp_control_endpoint_without_keys_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[supervisor]\ncontrol = "tcp://0.0.0.0:5555"\n')

    assert problems(path) == [
        "supervise.toml:2:1: supervisor.control: tcp:// requires CURVE: set curve_server_key and curve_clients "
        "(see supervise keygen), or insecure = true to let anyone who can reach the port run any command"
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"udp://x"', 'expected an endpoint like "ipc:///run/supervise/control.sock", got "udp://x"'),
        ('"ipc://"', 'expected an endpoint like "ipc:///run/supervise/control.sock", got "ipc://"'),
        ("5555", 'expected an endpoint like "ipc:///run/supervise/control.sock", got 5555'),
    ],
)
def test_endpoints_must_be_ipc(tmp_path: Path, value: str, problem: str) -> None:
    assert problems(write(tmp_path, f"[supervisor]\nevents = {value}\n")) == [
        f"supervise.toml:2:1: supervisor.events: {problem}"
    ]


def test_an_abstract_ipc_endpoint_is_kept_as_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[supervisor]\ncontrol = "ipc://@supervise-control"\n'))

    assert config.supervisor.control_endpoint == "ipc://@supervise-control"


def test_a_state_dir_too_long_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    state_dir = "/" + "d" * 100
    path = write(tmp_path, f'[supervisor]\nstate_dir = "{state_dir}"\n')

    assert problems(path) == [
        f"supervise.toml:2:1: supervisor.state_dir: ipc path {state_dir}/control.sock is 114 bytes; "
        "UNIX sockets allow 107 (use a shorter state_dir)"
    ]


def test_a_long_state_dir_is_reported_alongside_other_supervisor_problems(tmp_path: Path) -> None:
    path = write(tmp_path, f'[supervisor]\nlog_backups = "3"\nstate_dir = "/{"d" * 100}"\n')

    assert [p.split(": ")[1] for p in problems(path)] == ["supervisor.log_backups", "supervisor.state_dir"]


def test_a_state_dir_whose_sockets_are_all_set_elsewhere_may_be_long(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[supervisor]\nstate_dir = "/{"d" * 100}"\ncontrol = "ipc:///tmp/c.sock"\nevents = "ipc:///tmp/e.sock"\n',
    )

    # The workers endpoint has no key yet, so it still lives in state_dir.
    assert len(problems(path)) == 1 and "workers.sock is 114 bytes" in problems(path)[0]


def test_a_control_endpoint_too_long_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    socket = "/" + "c" * 120 + ".sock"
    path = write(tmp_path, f'[supervisor]\ncontrol = "ipc://{socket}"\n')

    assert problems(path) == [
        f"supervise.toml:2:1: supervisor.control: ipc path {socket} is 126 bytes; "
        "UNIX sockets allow 107 (use a shorter path)"
    ]


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ('http = "9180"', 'http: expected "host:port" like "127.0.0.1:9180", got "9180"'),
        ('http = "localhost:99999"', 'http: expected "host:port" like "127.0.0.1:9180", got "localhost:99999"'),
        ('log_max_bytes = "ten"', 'log_max_bytes: invalid size "ten" (use 512KiB, 300MB, 1.5GiB or a number of bytes)'),
        ("log_backups = -1", "log_backups: expected an integer >= 0, got -1"),
        ('state_dir = ""', 'state_dir: expected a path, got ""'),
    ],
)
def test_wrong_supervisor_values_are_reported(tmp_path: Path, lines: str, problem: str) -> None:
    assert problems(write(tmp_path, f"[supervisor]\n{lines}\n")) == [f"supervise.toml:2:1: supervisor.{problem}"]


@pytest.mark.parametrize("http", ["127.0.0.1:9180", "[::1]:9180", "localhost:0"])
def test_http_takes_host_and_port(tmp_path: Path, http: str) -> None:
    assert load_config(write(tmp_path, f'[supervisor]\nhttp = "{http}"\n')).supervisor.http == http


def test_tables_of_the_wrong_shape_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, 'supervisor = "big"\n[services]\nweb = "sh"\n')

    assert problems(path) == [
        "supervise.toml:1:1: supervisor: expected a table, got string",
        "supervise.toml:3:1: services.web: expected a table, got string",
    ]


def test_services_that_is_not_a_table_is_reported(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "services = [1]\n")) == [
        "supervise.toml:1:1: services: expected a table of [services.NAME] tables, got list"
    ]


def test_problems_inside_inline_tables_and_dotted_keys_point_at_their_own_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '''
        description = """
        [services.fake]
        backoff = "oops"
        """
        [services]
        web = { command = "sh", backof = "1s" }
        api.target = "api:app"
        api.restart = 3
        [services.db]
        command = "sh"
        env.PORT = [5432]
        ''',
    )

    assert problems(path) == [
        "supervise.toml:1:1: description: unknown key",
        'supervise.toml:6:25: services.web.backof: unknown key; did you mean "backoff"?',
        'supervise.toml:8:1: services.api.restart: expected one of "always", "on-success", '
        '"on-failure", "on-abnormal", "on-abort", "on-watchdog", "never"; got 3',
        "supervise.toml:11:1: services.db.env.PORT: expected a string, number or boolean, got list",
    ]


def test_problems_in_quoted_keys_are_located(tmp_path: Path) -> None:
    path = write(tmp_path, '[services."my web"]\ncommand = "sh"\n"max restarts" = 1\n')

    assert problems(path) == [
        'supervise.toml:1:1: services."my web": names must match [a-z][a-z0-9_-]{0,62}',
        'supervise.toml:3:1: services."my web"."max restarts": unknown key; did you mean "max_restarts"?',
    ]


def test_problems_from_a_dict_have_no_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": {"web": {"command": "sh", "backoff": "x"}}}, source="embedded")

    assert str(caught.value) == 'embedded: services.web.backoff: invalid duration "x" (use 500ms, 10s, 5m, 1h)'


def test_text_that_does_not_match_the_data_leaves_lines_out_instead_of_failing() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": {"web": {"backoff": "x"}}}, text="[[[ not toml at all")

    assert [p.line for p in caught.value.problems] == [None, None]


def test_a_problem_renders_with_line_and_column_when_known() -> None:
    assert ConfigProblem("a.b", "bad", 3, 7).render("c.toml") == "c.toml:3:7: a.b: bad"
    assert ConfigProblem("a.b", "bad", 3).render("c.toml") == "c.toml:3: a.b: bad"
    assert ConfigProblem("a.b", "bad").render("c.toml") == "c.toml: a.b: bad"
    assert ConfigProblem("", "cannot read config c.toml: gone").render("c.toml") == "cannot read config c.toml: gone"


# --- diff ----------------------------------------------------------------------------


def test_diff_names_added_removed_changed_and_unchanged_services(tmp_path: Path) -> None:
    old = parse_config(
        {
            "services": {
                "web": {"command": "sh", "backoff": "1s"},
                "api": {"target": "api:app"},
                "cron": {"command": "sh"},
            }
        },
        base_dir=tmp_path,
    )
    new = parse_config(
        {
            "supervisor": {"shutdown_timeout": "1m"},
            "services": {
                "api": {"target": "api:app"},
                "web": {"command": "sh -x", "backoff": "2s", "env": {"A": "1"}},
                "mail": {"command": "sh"},
            },
        },
        base_dir=tmp_path,
    )

    assert diff_configs(old, new) == ConfigDiff(
        added=("mail",),
        removed=("cron",),
        changed=MappingProxyType({"web": ("command", "backoff", "env")}),
        unchanged=("api",),
        supervisor=("shutdown_timeout",),
    )


def test_a_config_does_not_differ_from_itself(tmp_path: Path) -> None:
    config = parse_config({"services": {"web": {"command": "sh", "env": {"A": 1}}}}, base_dir=tmp_path)

    diff = diff_configs(config, config)

    assert (diff.added, diff.removed, dict(diff.changed), diff.unchanged, diff.supervisor) == ((), (), {}, ("web",), ())


def test_diff_reports_derived_defaults_under_their_own_key(tmp_path: Path) -> None:
    old = parse_config({"services": {"web": {"command": "sh"}}}, base_dir=tmp_path)
    new = parse_config({"services": {"web": {"command": "sh", "heartbeat_interval": "4s"}}}, base_dir=tmp_path)

    assert diff_configs(old, new).changed == {"web": ("heartbeat_interval", "heartbeat_timeout")}


def test_lines_are_found_past_strings_arrays_and_comments_that_look_like_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        # [services.commented]
        [services.web]
        command = [
          "sh", # a comment ]
          "-c", "echo '[services.fake]' ]",
        ]
        env = { NOTE = \'\'\'
        [services.multi]
        backoff = "x"
        \'\'\' }
        [services.api]
        target = "api:app"
        env.x.y = 1
        [services."db.main"]
        command = "sh"
        stop_signal = "STOP"
        """,
    )

    assert problems(path) == [
        "supervise.toml:13:1: services.api.env.x: expected a string, number or boolean, got table",
        'supervise.toml:14:1: services."db.main": names must match [a-z][a-z0-9_-]{0,62}',
        'supervise.toml:16:1: services."db.main".stop_signal: expected a signal name ("TERM", "INT", "QUIT", '
        '"HUP", "USR1", "USR2", "KILL", "ABRT") or number, got "STOP"',
    ]


def test_a_top_level_that_is_not_a_table_is_one_problem_naming_the_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config([1, 2], source="embedded")  # type: ignore[arg-type]

    assert str(caught.value) == "config embedded must be a table, got list"


def test_supervisor_config_for_a_state_dir_puts_every_socket_in_it(tmp_path: Path) -> None:
    supervisor = SupervisorConfig.for_state_dir(tmp_path, http="127.0.0.1:0")

    assert supervisor.control_endpoint == f"ipc://{tmp_path}/control.sock"
    assert supervisor.workers_endpoint == f"ipc://{tmp_path}/workers.sock"
    assert supervisor.events_endpoint == f"ipc://{tmp_path}/events.sock"
    assert (supervisor.shutdown_timeout_ms, supervisor.http) == (30_000, "127.0.0.1:0")


def test_start_timeout_0s_means_running_at_spawn_for_commands_but_not_for_python_targets(tmp_path: Path) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text('[services.cmd]\ncommand = ["sleep", "1"]\nstart_timeout = "0s"\n')
    assert load_config(path).services["cmd"].start_timeout_ms == 0
    path.write_text('[services.py]\ntarget = "m:f"\nstart_timeout = "0s"\n')
    with pytest.raises(ConfigError, match=r"services\.py\.start_timeout: must be > 0 for a Python target"):
        load_config(path)


def test_type_notify_is_for_long_running_commands_and_waits_30s_by_default(tmp_path: Path) -> None:
    config = parse_config({"services": {"n": {"command": "sh", "type": "notify", "watchdog": "5s"}}}, base_dir=tmp_path)
    assert config.services["n"].sd_notify and config.services["n"].start_timeout_ms == 30_000
    for table, problem in (
        ({"target": "a.b:c", "type": "notify"}, 'services.t.type: "notify" applies to commands'),
        (
            {"command": "sh", "type": "notify", "every": "5m"},
            'services.t.type: "notify" applies to long-running commands',
        ),
        ({"command": "sh", "watchdog": "5s"}, "services.t.watchdog: applies to Python targets"),
    ):
        with pytest.raises(ConfigError, match=problem):
            parse_config({"services": {"t": table}}, base_dir=tmp_path)


def test_a_notify_socket_path_must_fit_a_unix_socket_address(tmp_path: Path) -> None:
    state_dir = "/tmp/" + "s" * 40  # its control.sock fits; notify/NAME.sock of a long name does not
    name = "n" * 60
    with pytest.raises(ConfigError, match=f"services.{name}.type: its NOTIFY_SOCKET: ipc path .* bytes"):
        parse_config(
            {"supervisor": {"state_dir": state_dir}, "services": {name: {"command": "sh", "type": "notify"}}},
            base_dir=tmp_path,
        )


def test_max_tcp_connections_is_a_count_of_at_least_one(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[supervisor]\nmax_tcp_connections = 64\n")).supervisor.max_tcp_connections == 64
    assert problems(write(tmp_path, "[supervisor]\nmax_tcp_connections = 0\n")) == [
        "supervise.toml:2:1: supervisor.max_tcp_connections: expected an integer >= 1, got 0"
    ]
