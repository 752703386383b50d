"""Config values from the environment: `${VAR}`, `${VAR:-default}`, and SUPERVISE_* overrides.

Applied to the TOML document before validation, so an error names the key whose
string refers to a missing variable. A string `command` is split into arguments
first and each argument expanded on its own, so a value cannot add arguments. The http action's `url`, `headers` and
`body` are left alone: they are expanded in the worker, from the service's own
`env`, so a secret can be passed in `env` and never appear in the config.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any, Final

_REF: Final = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WORKER_EXPANDED: Final = frozenset({"url", "headers", "body"})

OVERRIDES: Final[Mapping[str, str]] = {
    "SUPERVISE_STATE_DIR": "state_dir",
    "SUPERVISE_CONTROL": "control",
    "SUPERVISE_EVENTS": "events",
    "SUPERVISE_HTTP": "http",
    "SUPERVISE_SHUTDOWN_TIMEOUT": "shutdown_timeout",
    "SUPERVISE_LOG_MAX_BYTES": "log_max_bytes",
}
"""Environment variables that override `[supervisor]` keys (environment > file > default)."""


def expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Raises KeyError(name)."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ and environ[name] != "":
            return environ[name]
        if default is not None:
            return default
        raise KeyError(name)

    return _REF.sub(value, text)


def _is_command(path: tuple[str, ...]) -> bool:
    return len(path) == 3 and path[0] == "services" and path[2] == "command"


def interpolate(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], str]]]:
    """A copy of `data` with every string expanded, and `(key path, problem)` pairs."""
    problems: list[tuple[tuple[str, ...], str]] = []

    def walk(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, str) and _is_command(path):
            return walk_command(value, path)
        if isinstance(value, str):
            try:
                return expand(value, environ)
            except KeyError as e:
                name = e.args[0]
                problems.append((path, f"variable ${{{name}}} is not set (use ${{{name}:-default}})"))
                return value
        if isinstance(value, Mapping):
            http = value.get("action") == "http" and len(path) == 2 and path[0] == "services"
            return {k: v if http and k in _WORKER_EXPANDED else walk(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, str(i))) for i, v in enumerate(value)]
        return value

    def walk_command(text: str, path: tuple[str, ...]) -> Any:
        # Split first, then expand each argument: a variable's value is one argument,
        # never more (`--flag ${X}` with X="a --evil" stays two arguments).
        try:
            argv = shlex.split(text)
        except ValueError:
            return text  # unbalanced quotes: the validator reports it on the string
        return [walk(arg, (*path, str(i))) for i, arg in enumerate(argv)]

    result = walk(data, ())
    overrides = {key: environ[variable] for variable, key in OVERRIDES.items() if environ.get(variable)}
    supervisor = result.get("supervisor", {})
    if overrides and isinstance(supervisor, Mapping):  # a malformed table is the validator's to report
        result["supervisor"] = {**supervisor, **overrides}
    return result, problems
