"""Where a config's supervisor listens, read without validating the whole config.

Clients (the CLI) only need the control endpoint; validating every service (which
imports the scheduling code and checks executables) would cost them most of their
start-up time. The rules are the config's own (`[supervisor] control`, else
`ipc://<state_dir>/control.sock`, paths relative to the file's folder, `${VAR}`
and SUPERVISE_* overrides), and a unit test holds the two equal. Anything
unusual returns None, and the caller falls back to `load_config`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from supervise.supervisor.config.interpolate import interpolate

_TABLE = re.compile(r"\s*\[\s*supervisor\s*\]\s*(#.*)?")
_ABOUT_SUPERVISOR = re.compile(r"""\s*(\[\s*\[?\s*)?["']?supervisor\b""")


def control_endpoint_of(path: str | Path) -> str | None:
    """The control endpoint of the config at `path`, or None when it cannot tell cheaply."""
    try:
        text = Path(path).read_text()
        data = _supervisor_table(text)
        if data is None:
            data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    data, problems = interpolate(data, os.environ)
    supervisor = data.get("supervisor", {})
    if problems or not isinstance(supervisor, dict):
        return None
    base = Path(os.path.abspath(Path(path).parent))
    control = supervisor.get("control")
    if isinstance(control, str):
        if control.startswith("tcp://"):
            return control
        where = control.removeprefix("ipc://")
        if not control.startswith("ipc://") or not where:
            return None
        return control if where.startswith("@") else f"ipc://{_resolve(base, where)}"
    state_dir = supervisor.get("state_dir", ".supervise")
    if not isinstance(state_dir, str) or not state_dir:
        return None
    return f"ipc://{_resolve(base, state_dir)}/control.sock"


def _resolve(base: Path, value: str) -> str:
    return os.path.abspath(base / os.path.expanduser(value))


def _supervisor_table(text: str) -> dict[str, Any] | None:
    """`{"supervisor": {...}}` parsed from the `[supervisor]` table's lines alone; None when the
    file may say more about it elsewhere (then the whole file is parsed).

    A config of 2 000 services is 60 000 lines, 0.1 s of TOML parsing for the few lines a
    client needs. Anything that could put a supervisor key outside that table (a root
    `supervisor.x =` key, a `[supervisor.x]` table, a repeated header), hide a line inside a
    string (multi-line strings) or make the rest of the file matter (`${VAR}` outside the
    table: an unset one refuses the whole config) takes the whole-file way.
    """
    if '"""' in text or "'''" in text:
        return None
    lines: list[str] = []
    inside = seen = False
    for line in text.splitlines():
        if line.lstrip().startswith("["):
            if _TABLE.fullmatch(line):
                if seen:
                    return None
                inside = seen = True
                continue
            if _ABOUT_SUPERVISOR.match(line):
                return None
            inside = False
        elif inside:
            lines.append(line)
        elif "${" in line or (not seen and _ABOUT_SUPERVISOR.match(line)):
            return None  # a root key about the supervisor may come before any table
    return tomllib.loads("[supervisor]\n" + "\n".join(lines)) if seen else {}
