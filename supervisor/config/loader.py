"""The config edge: TOML in, validated frozen `Config` / `ServiceConfig` out.

Every key is converted by one entry of a key table (`SERVICE_KEYS`,
`SUPERVISOR_KEYS`, in config_keys.py), then checked across keys here; all
problems are collected and raised together as one `ConfigError`, each with its
dotted key path and, when the TOML text is at hand, its line and column
(key_positions.py). What a reload changes is config_diff.py. The key reference
is docs/config.md.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from supervise.protocol.curve import read_key_directory
from supervise.supervisor.config.cluster import parse_cluster
from supervise.supervisor.config.diff import ConfigDiff, diff_configs
from supervise.supervisor.config.interpolate import interpolate
from supervise.supervisor.config.keys import (
    SERVICE_KEYS,
    SUPERVISOR_KEYS,
    Context,
    Invalid,
    Key,
    KeyPath,
    RestartMode,
    ipc_too_long,
)
from supervise.supervisor.config.model import (
    START_TIMEOUT_COMMAND_MS,
    START_TIMEOUT_TARGET_MS,
    Config,
    ServiceConfig,
    SupervisorConfig,
)
from supervise.supervisor.config.nesting import depth_problem, too_deep
from supervise.supervisor.config.notify import check_targets, declared_channels, parse_notify
from supervise.supervisor.config.placement import placement_problems
from supervise.supervisor.config.positions import locate_keys
from supervise.supervisor.config.schedule import (
    HTTP_TARGET,
    SCHEDULE_KEYS,
    http_args,
    is_scheduled,
    parse_schedule,
)
from supervise.supervisor.core.dependencies import find_problems
from supervise.supervisor.core.errors import ConfigError, ConfigProblem
from supervise.supervisor.core.units import format_duration_ms, type_name

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

SERVICE_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_TOP_LEVEL_KEYS = ("supervisor", "services", "notify", "cluster")
# With slots=True the class attributes are slot descriptors, not the defaults.
_SERVICE_DEFAULTS: Final[Mapping[str, Any]] = {
    f.name: f.default for f in fields(ServiceConfig) if f.default is not MISSING
}


# --- parsing --------------------------------------------------------------------------

_Issues = list[tuple[KeyPath, str]]

SPAWN_WARNING: Final = "; the service will fail to spawn (cause spawn_failed) until that is fixed"


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
    except RecursionError:  # the parser recurses per nesting level
        raise ConfigError(source, [ConfigProblem("", f"invalid TOML: {depth_problem()}")]) from None
    _check_depth(data, source)
    data, problems = interpolate(data, os.environ)
    if problems:
        raise ConfigError(source, _problems(list(problems), text))
    return parse_config(data, source=source, base_dir=Path(path).parent, text=text)


def _check_depth(data: object, source: str) -> None:
    path = too_deep(data)
    if path is not None:
        raise ConfigError(source, [ConfigProblem(_dotted(path[:4]), depth_problem())])


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
    ctx = Context(Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd())))
    if not isinstance(data, Mapping):
        problem = f"config {source} must be a table, got {type_name(data)}"
        raise ConfigError(source, [ConfigProblem("", problem)])
    _check_depth(data, source)
    issues: _Issues = []
    warnings: _Issues = []
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
        service = _parse_service(str(name), table, ("services", str(name)), ctx, issues, warnings)
        if service is not None:
            services[service.name] = service
    if supervisor is not None:
        issues += _notify_socket_problems(supervisor.state_dir, services)
    requires = {name: service.requires for name, service in services.items()}
    issues += [(("services", name, "requires"), problem) for name, problem in find_problems(requires)]
    notify = parse_notify(data.get("notify", {}), issues)
    cluster = parse_cluster(data["cluster"], issues) if "cluster" in data else None
    issues += placement_problems(services, cluster, supervisor.store if supervisor is not None else None)
    for name, service in services.items():
        if service.notify is not None:
            declared = declared_channels(data.get("notify"))
            issues += check_targets(service.notify, declared, ("services", name, "notify", "to"))
    if issues or supervisor is None:
        raise ConfigError(source, _problems(issues, text))
    return Config(
        source,
        ctx.base_dir,
        supervisor,
        MappingProxyType(services),
        notify=notify,
        warnings=tuple(_problems(warnings, text)),
        cluster=cluster,
    )


def parse_service(
    name: str,
    table: Mapping[str, object],
    *,
    base_dir: Path,
    key_prefix: str = "services",
    source: str = "<dict>",
    warnings: list[ConfigProblem] | None = None,
) -> ServiceConfig:
    """Validate one service's table, as found under `[services.NAME]`.

    Args:
        warnings: where a missing executable is reported, as `parse_config` does;
            without it (None), a missing executable is an error like any other.

    Raises:
        ConfigError: listing every problem, keyed `{key_prefix}.{name}.{key}`.
    """
    issues: _Issues = []
    found: _Issues | None = [] if warnings is not None else None
    prefix = tuple(key_prefix.split(".")) if key_prefix else ()
    service = _parse_service(name, table, (*prefix, name), Context(Path(os.path.abspath(base_dir))), issues, found)
    if service is None:
        raise ConfigError(source, _problems(issues, None))
    if warnings is not None and found:
        warnings.extend(_problems(found, None))
    return service


def _convert_table(
    table: Mapping[str, object], keys: Mapping[str, Key], path: KeyPath, ctx: Context, issues: _Issues
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
        except Invalid as exc:
            issues.extend(((*path, key, *below), problem) for below, problem in exc.problems)
        except ValueError as exc:
            issues.append(((*path, key), str(exc)))
    return values


def _parse_service(
    name: str, table: object, path: KeyPath, ctx: Context, issues: _Issues, warnings: _Issues | None = None
) -> ServiceConfig | None:
    before = len(issues)
    if not SERVICE_NAME.fullmatch(name):
        issues.append((path, f"names must match {SERVICE_NAME.pattern}"))
    if not isinstance(table, Mapping):
        issues.append((path, f"expected a table, got {type_name(table)}"))
        return None
    plain = {k: v for k, v in table.items() if k not in SCHEDULE_KEYS}
    values = _convert_table(plain, SERVICE_KEYS, path, ctx, issues)
    values["table"] = MappingProxyType(dict(table))
    if is_scheduled(table):
        schedule, problems = parse_schedule(name, table)
        issues.extend(((*path, key), problem) for key, problem in problems)
        values["schedule"] = schedule
        if table.get("action") == "http" and not problems:
            values["target"] = HTTP_TARGET
            args = {**http_args(table), **(schedule.args if schedule else {})}
            assert schedule is not None  # no problems: it parsed
            values["schedule"] = replace(schedule, args=MappingProxyType(args))
            table = {**table, "target": HTTP_TARGET}
    values.setdefault("cwd", ctx.base_dir)
    slow_start = "target" in table or values.get("sd_notify", False)  # waits for a hello, or READY=1
    values.setdefault("start_timeout_ms", START_TIMEOUT_TARGET_MS if slow_start else START_TIMEOUT_COMMAND_MS)
    if values.get("critical") and values.get("restart") is RestartMode.NEVER:
        values["restart"] = RestartMode.ON_FAILURE  # a critical service always gets its restarts
    _check_service(table, values, path, issues, warnings, ctx)
    if len(issues) > before:
        return None
    values.setdefault("command", None)
    values.setdefault("target", None)
    return ServiceConfig(name=name, **values)


def _check_service(
    table: Mapping[str, object],
    values: dict[str, Any],
    path: KeyPath,
    issues: _Issues,
    warnings: _Issues | None = None,
    ctx: Context | None = None,
) -> None:
    """Rules across keys; fills the defaults that follow other keys (backoff_max, heartbeat_timeout).

    A command's missing executable goes to `warnings` when given (see `Config.warnings`).
    """

    def usable(key: str) -> bool:  # converted, or not given so that its default holds
        return key not in table or SERVICE_KEYS[key].field in values

    if ("command" in table) == ("target" in table):
        issues.append((path, 'set exactly one of command (an executable) or target ("pkg.module:function")'))
    if values.get("watchdog_timeout_ms") is not None and "target" not in values and not values.get("sd_notify"):
        message = (
            'applies to Python targets (their code calls ctx.heartbeat()) and type = "notify" commands (WATCHDOG=1)'
        )
        issues.append(((*path, "watchdog"), message))
    if values.get("sd_notify") and "target" in table:
        issues.append(((*path, "type"), '"notify" applies to commands (a Python target says hello on its own)'))
    elif values.get("sd_notify") and values.get("schedule") is not None:
        issues.append(((*path, "type"), '"notify" applies to long-running commands, not scheduled ones'))
    elif values.get("sd_notify") and values.get("start_timeout_ms") == 0:
        issues.append(((*path, "start_timeout"), 'must be > 0 for type = "notify" (the time it has to send READY=1)'))
    schedule = values.get("schedule")
    if (
        schedule is not None
        and values.get("processes", 1) > 1
        and ("target" not in values or schedule.isolation != "worker")
    ):
        issues.append(
            ((*path, "processes"), 'must be 1 for a scheduled command or isolation = "process" (use concurrency)')
        )
    prevent, force = values.get("restart_prevent_exit_codes"), values.get("restart_force_exit_codes")
    if prevent is not None and force is not None:
        both = sorted(prevent.codes & force.codes) + [
            signal.Signals(s).name for s in sorted(prevent.signals & force.signals)
        ]
        if both:
            listed = ", ".join(str(status) for status in both)
            issues.append(
                (
                    (*path, "restart_force_exit_codes"),
                    f"{listed} also in restart_prevent_exit_codes: a status prevents or forces a restart, not both",
                )
            )
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
        on_path = ctx.on_path if ctx is not None else {}
        problem = _find_executable(values["command"][0], values["cwd"], values.get("env", {}), on_path)
        if problem is not None and warnings is not None:
            warnings.append(((*path, "command"), problem + SPAWN_WARNING))
        elif problem is not None:
            issues.append(((*path, "command"), problem))


def notify_socket_path(state_dir: Path, instance: str) -> Path:
    """Where the NOTIFY_SOCKET of a `type = "notify"` service instance (`web`, `web:1`) is bound."""
    return state_dir / "notify" / f"{instance}.sock"


def _notify_socket_problems(state_dir: Path, services: Mapping[str, ServiceConfig]) -> _Issues:
    """A notify service's socket path (of its last instance, the longest) must fit a UNIX socket address."""
    issues: _Issues = []
    for name, service in services.items():
        last = name if service.processes == 1 else f"{name}:{service.processes - 1}"
        too_long = ipc_too_long(str(notify_socket_path(state_dir, last))) if service.sd_notify else None
        if too_long is not None:
            issues.append(
                (("services", name, "type"), f"its NOTIFY_SOCKET: {too_long} (use a shorter state_dir or name)")
            )
    return issues


def _find_executable(
    program: str, cwd: Path, env: Mapping[str, str], on_path: dict[tuple[str, str], bool]
) -> str | None:
    """Why `program` cannot be started from `cwd` with `env`, or None if it can (`on_path`: see `Context`)."""
    if "/" not in program:
        search = env.get("PATH", os.environ.get("PATH", os.defpath))
        found = on_path.get((program, search))
        if found is None:
            found = on_path[program, search] = shutil.which(program, path=search) is not None
        return None if found else f'executable "{program}" not found on PATH={search}'
    path = cwd / program  # as exec would see it: relative to the worker's cwd
    shown = f'"{program}"' if path == Path(program) else f'"{program}" ({path})'
    if not path.exists():
        return f"executable {shown} does not exist"
    if path.is_dir() or not os.access(path, os.X_OK):
        return f"{shown} is not an executable file"
    return None


def _parse_supervisor(table: object, ctx: Context, issues: _Issues) -> SupervisorConfig | None:
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
            too_long = too_long or ipc_too_long(socket_path)
            values[f"{kind}_endpoint"] = f"ipc://{socket_path}"
    if too_long is not None:
        issues.append(((*path, "state_dir"), too_long + " (use a shorter state_dir)"))
    _check_security(table, values, path, issues)
    if ("http_tls_cert" in table) != ("http_tls_key" in table):
        given, missing = (
            ("http_tls_cert", "http_tls_key") if "http_tls_cert" in table else ("http_tls_key", "http_tls_cert")
        )
        issues.append(((*path, given), f"needs {missing} too: HTTPS takes a certificate and its private key"))
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
        issues.append(
            ((*path, given[0]), "needs curve_server_key, the supervisor's own NAME.key_secret (see supervise keygen)")
        )
    elif given and not directories:
        message = (
            "needs curve_clients (or curve_readonly_clients): a directory of the public keys of the clients allowed in"
        )
        issues.append(((*path, "curve_server_key"), message))
    if directories:
        keys = {key: read_key_directory(values[key]) for key in directories}
        if not any(keys.values()):
            where = " or ".join(str(values[key]) for key in directories)
            message = (
                f"no public keys (*.key files) in {where}: no client could connect (copy each client's NAME.key there)"
            )
            issues.append(((*path, directories[0]), message))
        if len(keys) == 2:
            both = sorted(
                keys["curve_clients"][k] for k in keys["curve_clients"].keys() & keys["curve_readonly_clients"].keys()
            )
            if both:
                message = (
                    f"key {', '.join(both)} is also in curve_clients; a key has full access "
                    f"or read-only access, not both"
                )
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
    import difflib  # only for this message: not held by every daemon

    close = difflib.get_close_matches(key, list(known), n=1)
    return f'unknown key; did you mean "{close[0]}"?' if close else "unknown key"


def _dotted(path: KeyPath) -> str:
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else _quoted(part) for part in path)


def _quoted(part: str) -> str:
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _problems(issues: _Issues, text: str | None) -> list[ConfigProblem]:
    """Turn (path, message) pairs into problems, located in `text` when given, in file order."""
    found = locate_keys(text) if text is not None else {}
    problems = []
    for path, message in issues:
        where = next((found[path[:n]] for n in range(len(path), 0, -1) if path[:n] in found), None)
        line, column = where if where is not None else (None, None)
        problems.append(ConfigProblem(_dotted(path), message, line, column))
    return sorted(problems, key=lambda p: p.line if p.line is not None else float("inf"))
