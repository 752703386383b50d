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
import tomllib
from pathlib import Path

from supervise.supervisor.config.interpolate import interpolate


def control_endpoint_of(path: str | Path) -> str | None:
    """The control endpoint of the config at `path`, or None when it cannot tell cheaply."""
    try:
        data = tomllib.loads(Path(path).read_text())
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
