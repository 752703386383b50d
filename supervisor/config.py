"""The config edge: TOML in, validated frozen `Config` / `ServiceConfig` out.

Every key is converted by one entry of a key table (`SERVICE_KEYS`,
`SUPERVISOR_KEYS`), then checked across keys; all problems are collected and
raised together as one `ConfigError`, each with its dotted key path and, when the
TOML text is at hand, its line and column. The key reference is docs/config.md.
"""

from __future__ import annotations

import bisect
import difflib
import os
import pwd
import re
import shlex
import shutil
import signal
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from supervise.protocol.curve import read_key_pair
from supervise.supervisor.curve import read_key_directory
from supervise.supervisor.dependencies import find_problems
from supervise.supervisor.errors import ConfigError, ConfigProblem
from supervise.supervisor.interpolate import interpolate
from supervise.supervisor.schedule_config import (
    HTTP_TARGET,
    SCHEDULE_KEYS,
    ScheduleConfig,
    http_args,
    is_scheduled,
    parse_schedule,
)
from supervise.supervisor.units import (
    format_duration_ms,
    parse_duration_ms,
    parse_size_bytes,
    show_value,
    type_name,
)

__all__ = [
    "SERVICE_KEYS",
    "SUPERVISOR_KEYS",
    "Config",
    "ConfigDiff",
    "Key",
    "RestartMode",
    "ServiceConfig",
    "SupervisorConfig",
    "diff_configs",
    "load_config",
    "parse_config",
    "parse_service",
]

KeyPath = tuple[str, ...]

SERVICE_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
IPC_PATH_MAX_BYTES: Final = 107  # sizeof(sockaddr_un.sun_path) on Linux, minus the NUL
START_TIMEOUT_COMMAND_MS: Final = 1_000  # a command must stay up this long to count as started
START_TIMEOUT_TARGET_MS: Final = 30_000  # a Python target must say hello within this


class RestartMode(StrEnum):
    """When a worker that exited is started again (key `restart`)."""

    ALWAYS = "always"  # after any exit, a clean exit 0 included
    ON_FAILURE = "on-failure"  # after a non-zero exit, a signal, a lost heartbeat or a failed start
    NEVER = "never"  # never: the first exit is final (not allowed with critical = true)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """One service, validated. Build it with `parse_service`, or `for_command` / `for_target`."""

    name: str
    command: tuple[str, ...] | None  # argv of an executable; or
    target: str | None  # "pkg.mod:func" or "pkg.mod:ServiceClass", run by the worker runner
    critical: bool = False  # giving up on it stops the supervisor (exit 70)
    autostart: bool = True
    restart: RestartMode = RestartMode.ON_FAILURE
    max_restarts: int = 5  # within restart_window_ms; 0: the first failure is final
    restart_window_ms: int = 60_000
    backoff_ms: int = 1_000  # first delay of an unstable worker; doubles up to backoff_max_ms
    backoff_max_ms: int = 60_000
    stable_after_ms: int = 60_000  # a run this long is stable: restart at once, failures reset
    start_timeout_ms: int  # START_TIMEOUT_COMMAND_MS or START_TIMEOUT_TARGET_MS by default
    heartbeat_interval_ms: int = 2_000
    heartbeat_timeout_ms: int = 10_000  # > heartbeat_interval_ms
    stop_signal: int = signal.SIGTERM
    stop_timeout_ms: int = 10_000  # then SIGKILL to the process group
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cwd: Path  # absolute
    user: str | None = None
    umask: int | None = None
    max_memory_bytes: int | None = None
    watchdog_timeout_ms: int | None = None  # key watchdog: the code must call ctx.heartbeat() this often
    requires: tuple[str, ...] = ()  # services that must be RUNNING before this one starts
    processes: int = 1  # identical worker processes: instances NAME, NAME:1, NAME:2 ...
    schedule: ScheduleConfig | None = None  # set when the service has a trigger (docs/scheduling.md)
    origin: str = "config"  # "config" or "runtime" (added through the control protocol)

    def __post_init__(self) -> None:
        # Direct construction (tests, embedding) gets the same immutable shapes as parsing.
        if self.command is not None and not isinstance(self.command, tuple):
            object.__setattr__(self, "command", tuple(self.command))
        if not isinstance(self.env, MappingProxyType):
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not isinstance(self.cwd, Path):
            object.__setattr__(self, "cwd", Path(self.cwd))

    @property
    def is_python(self) -> bool:
        """True for a Python target run by the worker runner, False for a command."""
        return self.target is not None

    @classmethod
    def for_command(cls, name: str, argv: Sequence[str], **overrides: Any) -> ServiceConfig:
        """A command service with defaults and field-name `overrides`; not validated."""
        values: dict[str, Any] = {"cwd": Path.cwd(), "start_timeout_ms": START_TIMEOUT_COMMAND_MS}
        return cls(name=name, command=tuple(argv), target=None, **(values | overrides))

    @classmethod
    def for_target(cls, name: str, target: str, **overrides: Any) -> ServiceConfig:
        """A Python-target service with defaults and field-name `overrides`; not validated."""
        values: dict[str, Any] = {"cwd": Path.cwd(), "start_timeout_ms": START_TIMEOUT_TARGET_MS}
        return cls(name=name, command=None, target=target, **(values | overrides))


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """The `[supervisor]` table, validated; paths absolute, endpoints filled in."""

    state_dir: Path
    control_endpoint: str
    workers_endpoint: str
    events_endpoint: str
    shutdown_timeout_ms: int = 30_000
    log_max_bytes: int = 10 * 1024 * 1024  # per service log file, before rotation
    log_backups: int = 3
    http: str | None = None  # "host:port" of the /health and /metrics endpoint
    store: str | None = None  # run history: None = SQLite in state_dir; "postgresql://..." to share it
    sample_interval_ms: int = 5_000  # how often every worker's CPU and memory are read
    history_keep: int = 1000  # finished runs kept per service and outcome
    history_max_age_ms: int = 30 * 86_400_000  # finished runs older than this are deleted
    # CURVE on tcp:// control and events endpoints (docs/security.md)
    curve_server_key: Path | None = None  # the supervisor's NAME.key_secret
    curve_clients: Path | None = None  # directory of client public keys (*.key): full access
    curve_readonly_clients: Path | None = None  # directory of client public keys: read-only commands only
    insecure: bool = False  # tcp:// without CURVE; logged at CRITICAL at every start

    @classmethod
    def for_state_dir(cls, state_dir: Path, **overrides: Any) -> SupervisorConfig:
        """Defaults with every endpoint an ipc:// socket in `state_dir`; not validated."""
        ipc = {f"{kind}_endpoint": f"ipc://{state_dir}/{kind}.sock" for kind in ("control", "workers", "events")}
        return cls(state_dir=state_dir, **(ipc | overrides))


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config: where it came from, the supervisor's settings, services in file order."""

    source: str  # the path as given, or "<dict>"
    base_dir: Path  # relative paths resolve against it
    supervisor: SupervisorConfig
    services: Mapping[str, ServiceConfig]


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload would change. Service names keep the new file's order (removed: the old's)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: Mapping[str, tuple[str, ...]]  # name -> changed key names, e.g. ("backoff", "env")
    unchanged: tuple[str, ...]
    supervisor: tuple[str, ...] = ()  # changed [supervisor] keys; these need a restart


# --- the key tables -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    base_dir: Path


class _Invalid(ValueError):
    """Raised by a converter with problems below its key (`env.NAME`)."""

    def __init__(self, problems: list[tuple[KeyPath, str]]) -> None:
        super().__init__(problems[0][1])
        self.problems = problems


Convert = Callable[[object, _Context], object]


@dataclass(frozen=True, slots=True)
class Key:
    """One TOML key: the dataclass field it fills and its converter.

    A converter turns the TOML value into the field's value or raises
    `ValueError` whose message is the problem shown to the user.
    """

    field: str
    convert: Convert


def _duration(*, positive: bool = False) -> Convert:
    def convert(value: object, ctx: _Context) -> int:
        ms: int = parse_duration_ms(value)
        if positive and ms == 0:
            raise ValueError(f"expected a duration > 0, got {show_value(value)}")
        return ms

    return convert


def _size(value: object, ctx: _Context) -> int:
    n: int = parse_size_bytes(value)
    if n == 0:
        raise ValueError(f"expected a size > 0, got {show_value(value)}")
    return n


def _count(value: object, ctx: _Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {show_value(value)}")
    return value


def _boolean(value: object, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show_value(value)}")
    return value


def _restart_mode(value: object, ctx: _Context) -> RestartMode:
    if isinstance(value, str) and value in RestartMode._value2member_map_:
        return RestartMode(value)
    options = ", ".join(f'"{mode}"' for mode in RestartMode)
    raise ValueError(f"expected one of {options}; got {show_value(value)}")


_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL")


def _signal(value: object, ctx: _Context) -> int:
    if isinstance(value, str) and value.upper().removeprefix("SIG") in _SIGNALS:
        return signal.Signals["SIG" + value.upper().removeprefix("SIG")]
    if isinstance(value, int) and not isinstance(value, bool) and value in signal.valid_signals():
        return value
    names = ", ".join(f'"{name}"' for name in _SIGNALS)
    raise ValueError(f"expected a signal name ({names}) or number, got {show_value(value)}")


def _command(value: object, ctx: _Context) -> tuple[str, ...]:
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


def _target(value: object, ctx: _Context) -> str:
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


def _env(value: object, ctx: _Context) -> Mapping[str, str]:
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
        raise _Invalid(problems)
    return MappingProxyType(env)


def _path(value: object, ctx: _Context) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"expected a path, got {show_value(value)}")
    # abspath, not resolve(): a "current -> releases/42" symlink must stay a symlink.
    return Path(os.path.abspath(ctx.base_dir / os.path.expanduser(value)))


def _directory(value: object, ctx: _Context) -> Path:
    path = _path(value, ctx)
    if not path.exists():
        raise ValueError(f"directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def _user(value: object, ctx: _Context) -> str:
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


def _umask(value: object, ctx: _Context) -> int:
    mask: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mask = value
    elif isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value.strip().lower()):
        mask = int(value.strip().lower().removeprefix("0o"), 8)
    if mask is None or not 0 <= mask <= 0o777:
        raise ValueError(f'expected an octal umask like "022" or 0o022, got {show_value(value)}')
    return mask


def _store_url(value: object, ctx: _Context) -> str:
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        return value
    if isinstance(value, str) and value.startswith("sqlite:///"):
        return value
    scheme = value.split("://", 1)[0] if isinstance(value, str) and "://" in value else None
    got = f'unsupported scheme "{scheme}"' if scheme else f"got {show_value(value)}"
    raise ValueError(f"{got} (use sqlite:///path or postgresql://user@host/db)")


def _positive_count_any(value: object, ctx: _Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {show_value(value)}")
    return value


def _positive_count(value: object, ctx: _Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"expected an integer from 1 to 1000, got {show_value(value)}")
    return value


def _names(value: object, ctx: _Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of service names like ["db"], got {show_value(value)}')
    return tuple(value)


def _ipc_too_long(path: str) -> str | None:
    size = len(os.fsencode(path))
    if size <= IPC_PATH_MAX_BYTES:
        return None
    return f"ipc path {path} is {size} bytes; UNIX sockets allow {IPC_PATH_MAX_BYTES}"


def _endpoint(value: object, ctx: _Context) -> str:
    if isinstance(value, str) and value.startswith("tcp://"):
        return _tcp_endpoint(value)  # and CURVE keys or insecure = true: see _check_security
    if not isinstance(value, str) or not value.startswith("ipc://") or value == "ipc://":
        example = "ipc:///run/supervise/control.sock"
        raise ValueError(f'expected an endpoint like "{example}", got {show_value(value)}')
    where = value.removeprefix("ipc://")
    if not where.startswith("@"):  # "@name" is Linux's abstract namespace, no file
        where = str(_path(where, ctx))
    if (problem := _ipc_too_long(where)) is not None:
        raise ValueError(problem + " (use a shorter path)")
    return "ipc://" + where


def _tcp_endpoint(value: str) -> str:
    match = re.fullmatch(r"tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", value)
    if match is None or not 1 <= int(match[2]) <= 65535:
        example = "tcp://127.0.0.1:7100"
        raise ValueError(f'expected "tcp://host:port" with a fixed port, like "{example}", got {show_value(value)}')
    return value


def _secret_key_file(value: object, ctx: _Context) -> Path:
    path = _path(value, ctx)
    read_key_pair(path)  # KeyFileError (a ValueError) says what is wrong with it
    return path


def _key_directory(value: object, ctx: _Context) -> Path:
    path = _directory(value, ctx)
    read_key_directory(path)  # every *.key file in it must hold a public key
    return path


def _host_port(value: object, ctx: _Context) -> str:
    pattern = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})"
    match = re.fullmatch(pattern, value) if isinstance(value, str) else None
    if match is None or int(match[2]) > 65535:
        raise ValueError(f'expected "host:port" like "127.0.0.1:9180", got {show_value(value)}')
    return str(value)


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
        "env": Key("env", _env),
        "cwd": Key("cwd", _directory),
        "user": Key("user", _user),
        "umask": Key("umask", _umask),
        "max_memory": Key("max_memory_bytes", _size),
        "requires": Key("requires", _names),
        "watchdog": Key("watchdog_timeout_ms", _duration(positive=True)),
        "processes": Key("processes", _positive_count),
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
    }
)

_TOP_LEVEL_KEYS = ("supervisor", "services")
# With slots=True the class attributes are slot descriptors, not the defaults.
_SERVICE_DEFAULTS: Final[Mapping[str, Any]] = {
    f.name: f.default for f in fields(ServiceConfig) if f.default is not MISSING
}


# --- parsing --------------------------------------------------------------------------

_Issues = list[tuple[KeyPath, str]]


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the TOML config file at `path`.

    Relative paths in it resolve against the file's folder.

    Raises:
        ConfigError: listing every problem, with line and column where known.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        problem = f"cannot read config {source}: {exc.strerror or exc}"
        raise ConfigError(source, [ConfigProblem("", problem)]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problem = f"invalid TOML: not UTF-8 text (byte 0x{raw[exc.start]:02x})"
        raise ConfigError(source, [ConfigProblem("", problem, line, column)]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [_syntax_problem(str(exc), text)]) from exc
    data, problems = interpolate(data, os.environ)
    if problems:
        raise ConfigError(source, _problems(list(problems), text))
    return parse_config(data, source=source, base_dir=Path(path).parent, text=text)


def _syntax_problem(message: str, text: str) -> ConfigProblem:
    match = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if match is not None:
        line, column = int(match[1]), int(match[2])
    else:  # "(at end of document)"
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    reason = re.sub(r" \(at [^()]*\)$", "", message)
    return ConfigProblem("", f"invalid TOML: {reason[:1].lower()}{reason[1:]}", line, column)


def parse_config(
    data: Mapping[str, object],
    *,
    source: str = "<dict>",
    base_dir: Path | None = None,
    text: str | None = None,
) -> Config:
    """Validate an already-parsed config (a TOML document or a dict built in code).

    Args:
        source: named in error messages.
        base_dir: relative paths resolve against it; default the current directory.
        text: the TOML source of `data`, used only to give problems a line and column.

    Raises:
        ConfigError: listing every problem found.
    """
    ctx = _Context(Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd())))
    if not isinstance(data, Mapping):
        problem = f"config {source} must be a table, got {type_name(data)}"
        raise ConfigError(source, [ConfigProblem("", problem)])
    issues: _Issues = []
    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            issues.append(((str(key),), _unknown_key(str(key), _TOP_LEVEL_KEYS)))
    supervisor = _parse_supervisor(data.get("supervisor", {}), ctx, issues)
    services: dict[str, ServiceConfig] = {}
    tables = data.get("services", {})
    if not isinstance(tables, Mapping):
        issues.append((("services",), f"expected a table of [services.NAME] tables, got {type_name(tables)}"))
        tables = {}
    for name, table in tables.items():
        service = _parse_service(str(name), table, ("services", str(name)), ctx, issues)
        if service is not None:
            services[service.name] = service
    requires = {name: service.requires for name, service in services.items()}
    issues += [(("services", name, "requires"), problem) for name, problem in find_problems(requires)]
    if issues or supervisor is None:
        raise ConfigError(source, _problems(issues, text))
    return Config(source, ctx.base_dir, supervisor, MappingProxyType(services))


def parse_service(
    name: str,
    table: Mapping[str, object],
    *,
    base_dir: Path,
    key_prefix: str = "services",
    source: str = "<dict>",
) -> ServiceConfig:
    """Validate one service's table, as found under `[services.NAME]`.

    Raises:
        ConfigError: listing every problem, keyed `{key_prefix}.{name}.{key}`.
    """
    issues: _Issues = []
    prefix = tuple(key_prefix.split(".")) if key_prefix else ()
    service = _parse_service(name, table, (*prefix, name), _Context(Path(os.path.abspath(base_dir))), issues)
    if service is None:
        raise ConfigError(source, _problems(issues, None))
    return service


def _convert_table(
    table: Mapping[str, object], keys: Mapping[str, Key], path: KeyPath, ctx: _Context, issues: _Issues
) -> dict[str, Any]:
    """Run each key's converter; report unknown keys and conversion failures."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        spec = keys.get(key)
        if spec is None:
            known = [*keys, *SCHEDULE_KEYS] if keys is SERVICE_KEYS else list(keys)
            issues.append(((*path, str(key)), _unknown_key(str(key), known)))
            continue
        try:
            values[spec.field] = spec.convert(raw, ctx)
        except _Invalid as exc:
            issues.extend(((*path, key, *below), problem) for below, problem in exc.problems)
        except ValueError as exc:
            issues.append(((*path, key), str(exc)))
    return values


def _parse_service(name: str, table: object, path: KeyPath, ctx: _Context, issues: _Issues) -> ServiceConfig | None:
    before = len(issues)
    if not SERVICE_NAME.fullmatch(name):
        issues.append((path, f"names must match {SERVICE_NAME.pattern}"))
    if not isinstance(table, Mapping):
        issues.append((path, f"expected a table, got {type_name(table)}"))
        return None
    plain = {k: v for k, v in table.items() if k not in SCHEDULE_KEYS}
    values = _convert_table(plain, SERVICE_KEYS, path, ctx, issues)
    if is_scheduled(table):
        schedule, problems = parse_schedule(name, table)
        issues.extend(((*path, key), problem) for key, problem in problems)
        values["schedule"] = schedule
        if table.get("action") == "http" and not problems:
            values["target"] = HTTP_TARGET
            args = {**http_args(table), **(schedule.args if schedule else {})}
            values["schedule"] = replace(schedule, args=MappingProxyType(args))
            table = {**table, "target": HTTP_TARGET}
    values.setdefault("cwd", ctx.base_dir)
    values.setdefault("start_timeout_ms", START_TIMEOUT_TARGET_MS if "target" in table else START_TIMEOUT_COMMAND_MS)
    if values.get("critical") and values.get("restart") is RestartMode.NEVER:
        values["restart"] = RestartMode.ON_FAILURE  # a critical service always gets its restarts
    _check_service(table, values, path, issues)
    if len(issues) > before:
        return None
    values.setdefault("command", None)
    values.setdefault("target", None)
    return ServiceConfig(name=name, **values)


def _check_service(table: Mapping[str, object], values: dict[str, Any], path: KeyPath, issues: _Issues) -> None:
    """Rules across keys; fills the defaults that follow other keys (backoff_max, heartbeat_timeout)."""

    def usable(key: str) -> bool:  # converted, or not given so that its default holds
        return key not in table or SERVICE_KEYS[key].field in values

    if ("command" in table) == ("target" in table):
        issues.append((path, 'set exactly one of command (an executable) or target ("pkg.module:function")'))
    if values.get("watchdog_timeout_ms") is not None and "target" not in values:
        issues.append(((*path, "watchdog"), "applies to Python targets (their code calls ctx.heartbeat())"))
    if values.get("schedule") is not None and values.get("processes", 1) > 1:
        issues.append(((*path, "processes"), "must be 1 for a scheduled service (use overlap and max_concurrent)"))
    if "target" in values and values.get("start_timeout_ms") == 0:
        issues.append(((*path, "start_timeout"), "must be > 0 for a Python target (the time it has to say hello)"))
    backoff = values.get("backoff_ms", _SERVICE_DEFAULTS["backoff_ms"])
    if "backoff_max" not in table:
        values["backoff_max_ms"] = max(_SERVICE_DEFAULTS["backoff_max_ms"], backoff)
    elif usable("backoff") and usable("backoff_max") and values["backoff_max_ms"] < backoff:
        got = format_duration_ms(values["backoff_max_ms"])
        issues.append(((*path, "backoff_max"), f"must be >= backoff ({format_duration_ms(backoff)}), got {got}"))
    interval = values.get("heartbeat_interval_ms", _SERVICE_DEFAULTS["heartbeat_interval_ms"])
    if "heartbeat_timeout" not in table:
        # Five missed heartbeats, and never under 10 s: GC pauses must not look like hangs.
        values["heartbeat_timeout_ms"] = max(_SERVICE_DEFAULTS["heartbeat_timeout_ms"], 5 * interval)
    elif usable("heartbeat_interval") and usable("heartbeat_timeout") and values["heartbeat_timeout_ms"] <= interval:
        got = format_duration_ms(values["heartbeat_timeout_ms"])
        expected = f"must be > heartbeat_interval ({format_duration_ms(interval)}), got {got}"
        issues.append(((*path, "heartbeat_timeout"), expected))
    if "command" in values and usable("cwd") and usable("env"):
        problem = _find_executable(values["command"][0], values["cwd"], values.get("env", {}))
        if problem is not None:
            issues.append(((*path, "command"), problem))


def _find_executable(program: str, cwd: Path, env: Mapping[str, str]) -> str | None:
    """Why `program` cannot be started from `cwd` with `env`, or None if it can."""
    if "/" not in program:
        search = env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(program, path=search)
        return None if found else f'executable "{program}" not found on PATH={search}'
    path = cwd / program  # as exec would see it: relative to the worker's cwd
    shown = f'"{program}"' if path == Path(program) else f'"{program}" ({path})'
    if not path.exists():
        return f"executable {shown} does not exist"
    if path.is_dir() or not os.access(path, os.X_OK):
        return f"{shown} is not an executable file"
    return None


def _parse_supervisor(table: object, ctx: _Context, issues: _Issues) -> SupervisorConfig | None:
    path = ("supervisor",)
    if not isinstance(table, Mapping):
        issues.append((path, f"expected a table, got {type_name(table)}"))
        return None
    before = len(issues)
    values = _convert_table(table, SUPERVISOR_KEYS, path, ctx, issues)
    if "state_dir" in table and "state_dir" not in values:
        return None
    state_dir = values.setdefault("state_dir", ctx.base_dir / ".supervise")
    too_long = None
    for kind, key in (("control", "control"), ("workers", None), ("events", "events")):
        if key is None or key not in table:
            socket_path = f"{state_dir}/{kind}.sock"
            too_long = too_long or _ipc_too_long(socket_path)
            values[f"{kind}_endpoint"] = f"ipc://{socket_path}"
    if too_long is not None:
        issues.append(((*path, "state_dir"), too_long + " (use a shorter state_dir)"))
    _check_security(table, values, path, issues)
    return None if len(issues) > before else SupervisorConfig(**values)


_CURVE_KEYS = ("curve_server_key", "curve_clients", "curve_readonly_clients")


def _check_security(table: Mapping[str, object], values: dict[str, Any], path: KeyPath, issues: _Issues) -> None:
    """tcp:// needs CURVE (a server key and client keys) or an explicit insecure = true; not both."""
    given = [key for key in _CURVE_KEYS if key in table]
    if any(SUPERVISOR_KEYS[key].field not in values for key in given):
        return  # a key file or directory is already reported; the rest follows from it
    if given and values.get("insecure"):
        issues.append(((*path, "insecure"), f"cannot be combined with {', '.join(given)}: CURVE or insecure, not both"))
        return
    directories = [key for key in _CURVE_KEYS[1:] if key in given]
    if given and "curve_server_key" not in given:
        issues.append(((*path, given[0]), "needs curve_server_key, the supervisor's own NAME.key_secret (see supervise keygen)"))
    elif given and not directories:
        message = "needs curve_clients (or curve_readonly_clients): a directory of the public keys of the clients allowed in"
        issues.append(((*path, "curve_server_key"), message))
    if directories:
        keys = {key: read_key_directory(values[key]) for key in directories}
        if not any(keys.values()):
            where = " or ".join(str(values[key]) for key in directories)
            message = f"no public keys (*.key files) in {where}: no client could connect (copy each client's NAME.key there)"
            issues.append(((*path, directories[0]), message))
        if len(keys) == 2:
            both = sorted(keys["curve_clients"][k] for k in keys["curve_clients"].keys() & keys["curve_readonly_clients"].keys())
            if both:
                message = f"key {', '.join(both)} is also in curve_clients; a key has full access or read-only access, not both"
                issues.append(((*path, "curve_readonly_clients"), message))
    if given:
        return
    for kind in ("control", "events"):
        if str(values.get(f"{kind}_endpoint", "")).startswith("tcp://") and not values.get("insecure"):
            message = (
                "tcp:// requires CURVE: set curve_server_key and curve_clients (see supervise keygen), "
                "or insecure = true to let anyone who can reach the port run any command"
            )
            issues.append(((*path, kind), message))


def _unknown_key(key: str, known: Sequence[str] | Mapping[str, object]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f'unknown key; did you mean "{close[0]}"?' if close else "unknown key"


def _dotted(path: KeyPath) -> str:
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else _quoted(part) for part in path)


def _quoted(part: str) -> str:
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _problems(issues: _Issues, text: str | None) -> list[ConfigProblem]:
    """Turn (path, message) pairs into problems, located in `text` when given, in file order."""
    found = _locate_keys(text) if text is not None else {}
    problems = []
    for path, message in issues:
        where = next((found[path[:n]] for n in range(len(path), 0, -1) if path[:n] in found), None)
        line, column = where if where is not None else (None, None)
        problems.append(ConfigProblem(_dotted(path), message, line, column))
    return sorted(problems, key=lambda p: p.line if p.line is not None else float("inf"))


# --- where keys are in the TOML text -------------------------------------------------


def _locate_keys(text: str) -> dict[KeyPath, tuple[int, int]]:
    """Best effort: the (line, column) where each key path is first defined in `text`.

    Knows table headers, dotted keys and inline tables, and skips strings,
    arrays and comments; stops quietly at anything it does not understand.
    """
    scanner = _KeyScanner(text)
    try:
        scanner.document()
    except (IndexError, ValueError, tomllib.TOMLDecodeError):
        pass
    return scanner.found


class _KeyScanner:
    _BARE = re.compile(r"[A-Za-z0-9_-]+")
    _SCALAR_END = re.compile(r"[,\]}\n#]")

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.found: dict[KeyPath, tuple[int, int]] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def document(self) -> None:
        table: KeyPath = ()
        while self._skip(newlines=True) < len(self.text):
            start = self.i
            if self.text[start] == "[":
                brackets = 2 if self.text.startswith("[[", start) else 1
                self.i += brackets
                table = self._key()
                self._record(table, start)
                self._expect("]" * brackets)
            else:
                key = self._key()
                self._record(table + key, start)
                self._expect("=")
                self._value(table + key, record=True)
            if self._skip(newlines=False) < len(self.text) and self.text[self.i] not in "\r\n":
                raise ValueError("expected the end of the line")

    def _record(self, path: KeyPath, at: int) -> None:
        line = bisect.bisect_right(self._line_starts, at)
        for n in range(1, len(path) + 1):  # dotted keys and headers define their parents too
            self.found.setdefault(path[:n], (line, at - self._line_starts[line - 1] + 1))

    def _skip(self, *, newlines: bool) -> int:
        text = self.text
        while self.i < len(text):
            if text[self.i] in " \t" or (newlines and text[self.i] in "\r\n"):
                self.i += 1
            elif text[self.i] == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                break
        return self.i

    def _expect(self, token: str) -> None:
        self._skip(newlines=False)
        if not self.text.startswith(token, self.i):
            raise ValueError(f"expected {token}")
        self.i += len(token)

    def _key(self) -> KeyPath:
        parts = []
        while True:
            self._skip(newlines=False)
            if self.text[self.i] in "\"'":
                start = self.i
                self._string()
                parts.append(str(tomllib.loads("k = " + self.text[start : self.i])["k"]))
            else:
                match = self._BARE.match(self.text, self.i)
                if match is None:
                    raise ValueError("expected a key")
                parts.append(match[0])
                self.i = match.end()
            self._skip(newlines=False)
            if self.text[self.i] != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        text, quote = self.text, self.text[self.i]
        delimiter = quote * 3 if text.startswith(quote * 3, self.i) else quote
        self.i += len(delimiter)
        while not text.startswith(delimiter, self.i):
            if text[self.i] == "\\" and quote == '"':
                self.i += 1
            elif text[self.i] == "\n" and len(delimiter) == 1:
                raise ValueError("unterminated string")
            self.i += 1
        self.i += len(delimiter)
        while len(delimiter) == 3 and text.startswith(quote, self.i):  # """a "quoted" word""""
            self.i += 1

    def _value(self, path: KeyPath, *, record: bool) -> None:
        self._skip(newlines=False)
        opening = self.text[self.i]
        if opening in "\"'":
            self._string()
        elif opening in "[{":
            self.i += 1
            closing = "]" if opening == "[" else "}"
            while self._skip(newlines=True) < len(self.text) and self.text[self.i] != closing:
                if opening == "{":
                    start = self.i
                    key = self._key()
                    if record:
                        self._record(path + key, start)
                    self._expect("=")
                    self._value(path + key, record=record)
                else:
                    self._value(path, record=False)
                if self._skip(newlines=True) < len(self.text) and self.text[self.i] == ",":
                    self.i += 1
                elif self.text[self.i] != closing:
                    raise ValueError(f"expected , or {closing}")
            self.i += 1
        else:
            match = self._SCALAR_END.search(self.text, self.i)
            end = len(self.text) if match is None else match.start()
            if end == self.i:
                raise ValueError("expected a value")
            self.i = end


# --- reload ---------------------------------------------------------------------------

_SERVICE_KEY_OF_FIELD = {spec.field: key for key, spec in SERVICE_KEYS.items()}
_SUPERVISOR_KEY_OF_FIELD = {spec.field: key for key, spec in SUPERVISOR_KEYS.items()}


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs service by service, naming changed keys as the TOML does."""
    changed: dict[str, tuple[str, ...]] = {}
    unchanged = []
    for name, service in new.services.items():
        if name in old.services:
            keys = _changed_keys(old.services[name], service, _SERVICE_KEY_OF_FIELD)
            if keys:
                changed[name] = keys
            else:
                unchanged.append(name)
    return ConfigDiff(
        added=tuple(name for name in new.services if name not in old.services),
        removed=tuple(name for name in old.services if name not in new.services),
        changed=MappingProxyType(changed),
        unchanged=tuple(unchanged),
        supervisor=_changed_keys(old.supervisor, new.supervisor, _SUPERVISOR_KEY_OF_FIELD),
    )


def _changed_keys(old: object, new: object, key_of_field: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(
        key_of_field.get(f.name, f.name)
        for f in fields(old)  # type: ignore[arg-type]
        if getattr(old, f.name) != getattr(new, f.name)
    )
