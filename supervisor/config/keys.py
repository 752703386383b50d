"""The key tables: each TOML key, the dataclass field it fills and its converter.

`SERVICE_KEYS` and `SUPERVISOR_KEYS` map key names to `Key` entries. A converter
takes the TOML value and a `Context` and returns the field's value, or raises
`ValueError` (`Invalid` for problems below the key) whose message is shown to
the user. Checks across keys belong to the parser in config.py.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Final

from supervise.protocol.curve import read_key_directory, read_key_pair
from supervise.protocol.url_policy import parse_allow_list
from supervise.supervisor.config import limits, listen
from supervise.supervisor.config.cluster import parse_placement
from supervise.supervisor.config.notify import parse_rule
from supervise.supervisor.core.restart import ExitStatuses
from supervise.supervisor.core.units import (
    parse_duration_ms,
    parse_size_bytes,
    show_value,
    type_name,
)

__all__ = [
    "IPC_PATH_MAX_BYTES",
    "SERVICE_KEYS",
    "SUPERVISOR_KEYS",
    "Context",
    "Convert",
    "Invalid",
    "Key",
    "KeyPath",
    "RestartMode",
    "ipc_too_long",
]

KeyPath = tuple[str, ...]  # a dotted key split into parts: ("services", "web", "env", "PATH")


class RestartMode(StrEnum):
    """When a worker that exited is started again (key `restart`), as systemd's `Restart=`."""

    ALWAYS = "always"  # after any exit, a clean exit 0 included
    ON_SUCCESS = "on-success"  # after a clean exit only (0, or a code in success_exit_codes)
    ON_FAILURE = "on-failure"  # after an unclean exit code, a signal, a hang or a failed start
    ON_ABNORMAL = "on-abnormal"  # after a signal, a hang (heartbeat, watchdog) or a start timeout; not an exit code
    ON_ABORT = "on-abort"  # after an unclean signal only
    ON_WATCHDOG = "on-watchdog"  # after a hang only (heartbeat_timeout or watchdog missed)
    NEVER = "never"  # never: the first exit is final (not allowed with critical = true)


@dataclass(frozen=True, slots=True)
class Context:
    """What a converter needs besides the value: the folder relative paths resolve against.

    `on_path`: what this parse found looking programs up on a PATH, `(program, PATH) -> found`;
    two thousand services running `sleep` look it up once.
    """

    base_dir: Path
    on_path: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False)


class Invalid(ValueError):
    """Raised by a converter with problems below its key (`env.NAME`)."""

    def __init__(self, problems: list[tuple[KeyPath, str]]) -> None:
        super().__init__(problems[0][1])
        self.problems = problems


Convert = Callable[[object, Context], object]


@dataclass(frozen=True, slots=True)
class Key:
    """One TOML key: the dataclass field it fills and its converter.

    A converter turns the TOML value into the field's value or raises
    `ValueError` whose message is the problem shown to the user.
    """

    field: str
    convert: Convert


def _duration(*, positive: bool = False) -> Convert:
    def convert(value: object, ctx: Context) -> int:
        ms: int = parse_duration_ms(value)
        if positive and ms == 0:
            raise ValueError(f"expected a duration > 0, got {show_value(value)}")
        return ms

    return convert


def _size(value: object, ctx: Context) -> int:
    n: int = parse_size_bytes(value)
    if n == 0:
        raise ValueError(f"expected a size > 0, got {show_value(value)}")
    return n


def _count(value: object, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {show_value(value)}")
    return value


def _boolean(value: object, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show_value(value)}")
    return value


def _restart_mode(value: object, ctx: Context) -> RestartMode:
    if isinstance(value, str) and value in RestartMode._value2member_map_:
        return RestartMode(value)
    options = ", ".join(f'"{mode}"' for mode in RestartMode)
    raise ValueError(f"expected one of {options}; got {show_value(value)}")


_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL", "ABRT")


def _signal(value: object, ctx: Context) -> int:
    if isinstance(value, str) and value.upper().removeprefix("SIG") in _SIGNALS:
        return signal.Signals["SIG" + value.upper().removeprefix("SIG")]
    if isinstance(value, int) and not isinstance(value, bool) and value in signal.valid_signals():
        return value
    names = ", ".join(f'"{name}"' for name in _SIGNALS)
    raise ValueError(f"expected a signal name ({names}) or number, got {show_value(value)}")


def _service_type(value: object, ctx: Context) -> bool:
    """`type`: "simple" (False) or "notify" (True: started once it sends READY=1, as systemd's Type=notify)."""
    if value in ("simple", "notify"):
        return value == "notify"
    raise ValueError(f'expected "simple" or "notify", got {show_value(value)}')


def _exit_statuses(value: object, ctx: Context) -> ExitStatuses:
    """A list of exit codes 0-255 and signal names (`[3, 75, "TERM", "SIGUSR1"]`), as systemd's."""
    if not isinstance(value, list):
        raise ValueError(
            f'expected a list of exit codes and signal names like [3, 75, "TERM"], got {show_value(value)}'
        )
    codes: set[int] = set()
    signals: set[int] = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 255:
            codes.add(item)
        elif isinstance(item, str) and "SIG" + item.upper().removeprefix("SIG") in signal.Signals.__members__:
            signals.add(signal.Signals["SIG" + item.upper().removeprefix("SIG")])
        else:
            raise ValueError(f'expected exit codes 0-255 and signal names like "TERM", got {show_value(item)}')
    return ExitStatuses(frozenset(codes), frozenset(signals))


def _command(value: object, ctx: Context) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {show_value(value)} into arguments: {str(exc).lower()}") from exc
    elif isinstance(value, (list, tuple)):
        for index, arg in enumerate(value):
            if not isinstance(arg, str):
                raise ValueError(f"expected a list of strings, got {show_value(arg)} at index {index}")
        argv = list(value)
    else:
        raise ValueError(f"must be a non-empty list or string, got {type_name(value)}")
    if not argv or not argv[0]:
        raise ValueError("must be a non-empty list or string")
    if any("\0" in arg for arg in argv):
        raise ValueError("arguments cannot contain NUL characters")
    return tuple(argv)


HOOK_CALL_MODULE: Final = "supervise.supervisor.daemon.hook_call"  # runs a { target = ... } hook


def _hook(value: object, ctx: Context) -> tuple[str, ...]:
    """A hook: a command, or `{ target = "pkg.mod:func" }` (a Python callable, run in a process of its own)."""
    if isinstance(value, Mapping):
        if set(value) != {"target"}:
            raise ValueError('expected a command, or a table { target = "pkg.module:function" }')
        target = _target(value["target"], ctx)
        if ":" not in target:
            raise ValueError(f'expected target = "pkg.module:function", got {show_value(target)}')
        return (sys.executable, "-m", HOOK_CALL_MODULE, target)
    return _command(value, ctx)


def _target(value: object, ctx: Context) -> str:
    text = value if isinstance(value, str) else ""
    if "@" in text:  # "package.module@job-name": a job registered with @registry.job("job-name")
        module, _, job = text.partition("@")
        if all(part.isidentifier() for part in module.split(".")) and re.fullmatch(r"[A-Za-z0-9_.-]+", job):
            return text
    module, _, attr = text.partition(":")
    if not all(part.isidentifier() for part in [*module.split("."), *attr.split(".")]):
        raise ValueError(
            f'expected "package.module:attribute" or "package.module@registered-job", got {show_value(value)}'
        )
    return text


def _env(value: object, ctx: Context) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table of strings, got {type_name(value)}")
    env: dict[str, str] = {}
    problems: list[tuple[KeyPath, str]] = []
    for name, item in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            problems.append(((str(name),), 'variable names must be non-empty, without "=" or NUL'))
        elif isinstance(item, bool):
            env[name] = "true" if item else "false"
        elif isinstance(item, (str, int, float)) and "\0" not in str(item):
            env[name] = str(item)
        else:
            problems.append(((name,), f"expected a string, number or boolean, got {show_value(item)}"))
    if problems:
        raise Invalid(problems)
    return MappingProxyType(env)


def _path(value: object, ctx: Context) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"expected a path, got {show_value(value)}")
    # abspath, not resolve(): a "current -> releases/42" symlink must stay a symlink.
    return Path(os.path.abspath(ctx.base_dir / os.path.expanduser(value)))


def _file(value: object, ctx: Context) -> Path:
    path = _path(value, ctx)
    if not path.is_file():
        raise ValueError(f"{path} is not a file" if path.exists() else f"{path} does not exist")
    return path


def _directory(value: object, ctx: Context) -> Path:
    path = _path(value, ctx)
    if not path.exists():
        raise ValueError(f"directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def _user(value: object, ctx: Context) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a user name, got {show_value(value)}")
    try:
        uid = pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError(f'unknown user "{value}"') from None
    euid = os.geteuid()
    if euid != 0 and uid != euid:
        try:
            me = pwd.getpwuid(euid).pw_name
        except KeyError:
            me = str(euid)
        raise ValueError(f'user= requires running as root (supervise runs as "{me}")')
    return value


def _umask(value: object, ctx: Context) -> int:
    mask: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mask = value
    elif isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value.strip().lower()):
        mask = int(value.strip().lower().removeprefix("0o"), 8)
    if mask is None or not 0 <= mask <= 0o777:
        raise ValueError(f'expected an octal umask like "022" or 0o022, got {show_value(value)}')
    return mask


def _store_url(value: object, ctx: Context) -> str:
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        return value
    if isinstance(value, str) and value.startswith("sqlite:///"):
        return value
    scheme = value.split("://", 1)[0] if isinstance(value, str) and "://" in value else None
    got = f'unsupported scheme "{scheme}"' if scheme else f"got {show_value(value)}"
    raise ValueError(f"{got} (use sqlite:///path or postgresql://user@host/db)")


def _positive_count_any(value: object, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {show_value(value)}")
    return value


def _positive_count(value: object, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"expected an integer from 1 to 1000, got {show_value(value)}")
    return value


def _names(value: object, ctx: Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of service names like ["db"], got {show_value(value)}')
    return tuple(value)


IPC_PATH_MAX_BYTES: Final = 107  # sizeof(sockaddr_un.sun_path) on Linux, minus the NUL


def ipc_too_long(path: str) -> str | None:
    size = len(os.fsencode(path))
    if size <= IPC_PATH_MAX_BYTES:
        return None
    return f"ipc path {path} is {size} bytes; UNIX sockets allow {IPC_PATH_MAX_BYTES}"


def _endpoint(value: object, ctx: Context) -> str:
    if isinstance(value, str) and value.startswith("tcp://"):
        return _tcp_endpoint(value)  # and CURVE keys or insecure = true: see _check_security in config.py
    if not isinstance(value, str) or not value.startswith("ipc://") or value == "ipc://":
        example = "ipc:///run/supervise/control.sock"
        raise ValueError(f'expected an endpoint like "{example}", got {show_value(value)}')
    where = value.removeprefix("ipc://")
    if not where.startswith("@"):  # "@name" is Linux's abstract namespace, no file
        where = str(_path(where, ctx))
    if (problem := ipc_too_long(where)) is not None:
        raise ValueError(problem + " (use a shorter path)")
    return "ipc://" + where


def _tcp_endpoint(value: str) -> str:
    match = re.fullmatch(r"tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", value)
    if match is None or not 1 <= int(match[2]) <= 65535:
        example = "tcp://127.0.0.1:7100"
        raise ValueError(f'expected "tcp://host:port" with a fixed port, like "{example}", got {show_value(value)}')
    return value


def _secret_key_file(value: object, ctx: Context) -> Path:
    path = _path(value, ctx)
    read_key_pair(path)  # KeyFileError (a ValueError) says what is wrong with it
    return path


def _key_directory(value: object, ctx: Context) -> Path:
    path = _directory(value, ctx)
    read_key_directory(path)  # every *.key file in it must hold a public key
    return path


def _host_port(value: object, ctx: Context) -> str:
    pattern = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})"
    match = re.fullmatch(pattern, value) if isinstance(value, str) else None
    if match is None or int(match[2]) > 65535:
        raise ValueError(f'expected "host:port" like "127.0.0.1:9180", got {show_value(value)}')
    return str(value)


def _allow_addresses(value: object, ctx: Context) -> tuple[str, ...]:
    parse_allow_list(value)  # ValueError names the entry
    return tuple(value)  # type: ignore[arg-type]


SERVICE_KEYS: Final[Mapping[str, Key]] = MappingProxyType(
    {
        "command": Key("command", _command),
        "target": Key("target", _target),
        "critical": Key("critical", _boolean),
        "autostart": Key("autostart", _boolean),
        "restart": Key("restart", _restart_mode),
        "max_restarts": Key("max_restarts", _count),
        "restart_window": Key("restart_window_ms", _duration(positive=True)),
        "backoff": Key("backoff_ms", _duration()),
        "backoff_max": Key("backoff_max_ms", _duration()),
        "stable_after": Key("stable_after_ms", _duration()),
        "start_timeout": Key("start_timeout_ms", _duration()),
        "heartbeat_interval": Key("heartbeat_interval_ms", _duration(positive=True)),
        "heartbeat_timeout": Key("heartbeat_timeout_ms", _duration(positive=True)),
        "stop_signal": Key("stop_signal", _signal),
        "stop_timeout": Key("stop_timeout_ms", _duration(positive=True)),
        "hang_signal": Key("hang_signal", _signal),
        "type": Key("sd_notify", _service_type),
        "success_exit_codes": Key("success_exit_codes", _exit_statuses),
        "restart_prevent_exit_codes": Key("restart_prevent_exit_codes", _exit_statuses),
        "restart_force_exit_codes": Key("restart_force_exit_codes", _exit_statuses),
        "env": Key("env", _env),
        "cwd": Key("cwd", _directory),
        "user": Key("user", _user),
        "inherit_env": Key("inherit_env", _boolean),
        "umask": Key("umask", _umask),
        "max_memory": Key("max_memory_bytes", _size),
        "requires": Key("requires", _names),
        "watchdog": Key("watchdog_timeout_ms", _duration(positive=True)),
        "processes": Key("processes", _positive_count),
        "notify": Key("notify", lambda value, ctx: parse_rule(value)),  # docs/notifications.md
        "placement": Key("placement", lambda value, ctx: parse_placement(value)),  # docs/cluster.md
        # limits and identity (config/limits.py)
        "rlimits": Key("rlimits", limits.convert_rlimits),
        "nice": Key("nice", limits.convert_nice),
        "oom_score_adjust": Key("oom_score_adjust", limits.convert_oom_score_adjust),
        "group": Key("group", limits.convert_group),
        "supplementary_groups": Key("supplementary_groups", limits.convert_supplementary_groups),
        "cpu_quota": Key("cpu_quota_percent", limits.convert_cpu_quota),
        "memory_max": Key("memory_max_bytes", limits.convert_memory_max),
        "sockets": Key("sockets", listen.convert_sockets),  # config/listen.py
        # hooks (daemon/hooks.py): commands run around the service's life
        "before_start": Key("before_start", _hook),
        "after_start": Key("after_start", _hook),
        "before_stop": Key("before_stop", _hook),
        "after_stop": Key("after_stop", _hook),
        "on_fatal": Key("on_fatal", _hook),
        "hook_timeout": Key("hook_timeout_ms", _duration(positive=True)),
        # "## Scheduling keys" in docs/config.md: every, cron, at, ... go here.
    }
)

SUPERVISOR_KEYS: Final[Mapping[str, Key]] = MappingProxyType(
    {
        "state_dir": Key("state_dir", _path),
        "control": Key("control_endpoint", _endpoint),
        "events": Key("events_endpoint", _endpoint),
        "shutdown_timeout": Key("shutdown_timeout_ms", _duration(positive=True)),
        "log_max_bytes": Key("log_max_bytes", _size),
        "log_backups": Key("log_backups", _count),
        "http": Key("http", _host_port),
        "history_keep": Key("history_keep", _positive_count_any),
        "sample_interval": Key("sample_interval_ms", _duration(positive=True)),
        "store": Key("store", _store_url),
        "history_max_age": Key("history_max_age_ms", _duration(positive=True)),
        "curve_server_key": Key("curve_server_key", _secret_key_file),
        "curve_clients": Key("curve_clients", _key_directory),
        "curve_readonly_clients": Key("curve_readonly_clients", _key_directory),
        "insecure": Key("insecure", _boolean),
        "max_tcp_connections": Key("max_tcp_connections", _positive_count_any),
        "allow_addresses": Key("allow_addresses", _allow_addresses),
        "insecure_http": Key("insecure_http", _boolean),
        "tenant_max_pending_tasks": Key("tenant_max_pending_tasks", _positive_count_any),
        "tenant_max_runs_per_minute": Key("tenant_max_runs_per_minute", _positive_count_any),
        "http_tls_cert": Key("http_tls_cert", _file),
        "http_tls_key": Key("http_tls_key", _file),
    }
)
