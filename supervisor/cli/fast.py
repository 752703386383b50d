"""The `supervise` entry point: `status` and the daemon's `start` run before click and the other commands load.

Monitoring runs `supervise status` over and over, and most of its time went to
importing: click, every command module, the config loader. Here a plain
`status` (its own options, at most one NAME) imports only the endpoint lookup,
the client and the table renderer, makes one round trip and prints exactly what
the click command prints. Anything else (another command, `--help`, CURVE keys,
a tcp:// endpoint, an option this parser does not know, a config it cannot read
cheaply) goes to the click command line, unchanged.

`start CONFIG.toml` (the daemon, with at most `--log-level` and `--log-format`)
is read here too, and the daemon runs without click ever imported
(`cli.serve`): a daemon keeps what it imports for as long as it runs.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

DEFAULT_CONFIG = "supervise.toml"  # cli.base.DEFAULT_CONFIG (not imported: it imports click)
UNREACHABLE = 3  # cli.base.Exit.UNREACHABLE
FAILED = 1  # cli.base.Exit.FAILED
_VALUED = {"-c": "config", "--config": "config", "--endpoint": "endpoint", "--timeout": "timeout"}
_FLAGS = {"--json": "as_json", "--detail": "detail"}


def parse_status(args: list[str]) -> dict[str, Any] | None:
    """The options of `status ARGS` when this parser is sure of them; None to leave them to click."""
    if not args or args[0] != "status":
        return None
    opts: dict[str, Any] = {"config": None, "endpoint": None, "timeout": None, "as_json": False, "detail": False}
    name: str | None = None
    rest = iter(args[1:])
    for arg in rest:
        key, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if key in _VALUED:
            value = inline if inline else next(rest, None)
            if not value or opts[_VALUED[key]] is not None:
                return None
            opts[_VALUED[key]] = value
        elif arg in _FLAGS:
            opts[_FLAGS[arg]] = True
        elif arg.startswith("-") or name is not None:
            return None
        else:
            name = arg
    if opts["timeout"] is not None:
        try:
            opts["timeout"] = float(opts["timeout"])
        except ValueError:
            return None
        if not (opts["timeout"] > 0 and math.isfinite(opts["timeout"])):
            return None
    opts["name"] = name
    return opts


def _endpoint(config: str | None, endpoint: str | None) -> str | None:
    """As `cli.base._endpoint`, without the whole-config fallback (None: let click do it)."""
    if endpoint:
        return endpoint
    if os.environ.get("SUPERVISE_ENDPOINT"):
        return os.environ["SUPERVISE_ENDPOINT"]
    from supervise.supervisor.config.locate import control_endpoint_of

    return control_endpoint_of(config or DEFAULT_CONFIG)


def fast_status(args: list[str]) -> int | None:
    """Run `supervise status ...` here; its exit code, or None when click must handle it."""
    opts = parse_status(args)
    if opts is None or os.environ.get("SUPERVISE_CURVE_KEY") or os.environ.get("SUPERVISE_SERVER_KEY"):
        return None
    endpoint = _endpoint(opts["config"], opts["endpoint"])
    if endpoint is None or endpoint.startswith("tcp://"):
        return None
    from supervise.protocol.client import Client
    from supervise.protocol.errors import ClientTimeout, RemoteError

    call_args: dict[str, object] = {"name": opts["name"]} if opts["name"] else {}
    if opts["detail"]:
        call_args["detail"] = True
    timeout = opts["timeout"] if opts["timeout"] is not None else 30.0
    try:
        with Client(endpoint, timeout_s=timeout) as client:
            result: Any = client.request("status", call_args)
    except ClientTimeout as e:
        return _error(str(e), UNREACHABLE)
    except RemoteError as e:
        return _error(f"{e.message} ({e.code})", FAILED)
    if opts["as_json"]:
        import json

        text = json.dumps(result, indent=2, default=str)
    else:
        from supervise.supervisor.cli.render import status_table

        text = status_table(result)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `supervise status | head -1`: as click, quietly, exit 1
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's exit flushes and closes it
        return FAILED
    return 0


def _error(message: str, code: int) -> int:
    """What click prints for a `CliError`."""
    sys.stderr.write(f"Error: {message}\n")
    return code


def parse_start(args: list[str]) -> dict[str, str] | None:
    """The options of `start ARGS` when they run the daemon and this parser is sure of them; None to leave
    them to click (a service of a running daemon, `--help`, an option it does not know, a bad value)."""
    from supervise.supervisor.cli.serve import LOG_FORMATS, LOG_LEVELS

    if not args or args[0] != "start":
        return None
    if os.environ.get("SUPERVISE_CURVE_KEY") or os.environ.get("SUPERVISE_SERVER_KEY"):
        return None  # click checks their files
    choices = {"--log-level": LOG_LEVELS, "--log-format": LOG_FORMATS}
    opts: dict[str, str] = {}
    target: str | None = None
    rest = iter(args[1:])
    for arg in rest:
        key, sep, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if key in choices:
            value = inline if sep else next(rest, None)
            if value not in choices[key] or key in opts:
                return None
            opts[key] = value
        elif arg.startswith("-") or target is not None:
            return None
        else:
            target = arg
    # As the click command decides: a TOML file (or any existing file) is a config; anything else a service.
    if target is not None and not (target.endswith(".toml") or os.path.isfile(target)):
        return None
    return {
        "path": target or DEFAULT_CONFIG,
        "log_level": opts.get("--log-level", "info"),
        "log_format": opts.get("--log-format", "text"),
    }


def fast_start(args: list[str]) -> int | None:
    """Run the daemon of `supervise start ...` here (it returns only on an error, with its exit code),
    or None when click must handle the command line."""
    opts = parse_start(args)
    if opts is None:
        return None
    from supervise.supervisor.cli.serve import StartFailed, run_daemon

    try:
        run_daemon(opts["path"], opts["log_level"], opts["log_format"])
    except StartFailed as e:
        return _error(e.message, e.code)
    except (EOFError, KeyboardInterrupt):  # as click: ^C before the daemon handles its signals
        sys.stderr.write("\nAborted!\n")
        return FAILED


def main() -> None:
    """`supervise`: `status` and the daemon at once, everything else through click (`cli.main.main`)."""
    code = fast_status(sys.argv[1:])
    if code is None:
        code = fast_start(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from supervise.supervisor.cli.main import main as click_main

    click_main()
