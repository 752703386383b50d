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
from pathlib import Path
from typing import Any

from supervise.supervisor.config.interpolate import interpolate

_TABLE = re.compile(r"\s*\[\s*supervisor\s*\]\s*(#.*)?")
_ABOUT_SUPERVISOR = re.compile(r"""\s*(\[\s*\[?\s*)?["']?supervisor\b""")
# A line of the table a client can read without a TOML parser: blank, a comment, or a bare key
# set to a string without escapes (basic or literal), as `state_dir = "state"`.
_COMMENT = r"(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?"
_BLANK = re.compile(rf"[ \t]*{_COMMENT}")
_TEXT = r"[^\x00-\x08\x0a-\x1f\x7f"  # what a one-line string may hold, less its quote (closed below)
_PLAIN_STRING = re.compile(
    rf"""[ \t]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*(?:"({_TEXT}"\\]*)"|'({_TEXT}']*)')[ \t]*{_COMMENT}"""
)


def control_endpoint_of(path: str | Path) -> str | None:
    """The control endpoint of the config at `path`, or None when it cannot tell cheaply."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    data = _supervisor_table(text)
    if data is None:
        data = _parse(text)
    if data is None:
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
    if not seen:
        return {}
    table = _plain_strings(lines)
    return {"supervisor": table} if table is not None else _parse("[supervisor]\n" + "\n".join(lines))


def _plain_strings(lines: list[str]) -> dict[str, Any] | None:
    """The table's keys when each line is blank, a comment or `key = "string without escapes"`; else None.

    Most configs' `[supervisor]` table is a few such lines, and parsing them here spares a
    client importing the TOML parser (a fifth of `supervise status`'s imports).
    """
    table: dict[str, Any] = {}
    for line in lines:
        if _BLANK.fullmatch(line):
            continue
        match = _PLAIN_STRING.fullmatch(line)
        if match is None or match[1] in table:
            return None
        table[match[1]] = match[2] if match[2] is not None else match[3]
    return table


def _parse(text: str) -> dict[str, Any] | None:
    """The TOML document `text`, or None if it is not valid TOML."""
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
