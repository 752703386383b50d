"""What every `supervise` command shares: the `cli` group, finding the daemon, calling it, printing."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from supervise.protocol.version import VERSION
from supervise.supervisor.cli.exits import Exit as Exit  # re-exported: every command module takes it from here

DEFAULT_CONFIG = "supervise.toml"


class CliError(click.ClickException):
    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        # click declares exit_code on the class (a ClassVar from click 8.5); this error's code is its own
        self.__dict__["exit_code"] = int(code)


def _endpoint(config: str | None, endpoint: str | None) -> str:
    """--endpoint, else $SUPERVISE_ENDPOINT, else the control endpoint of -c FILE (./supervise.toml)."""
    if endpoint:
        return endpoint
    if os.environ.get("SUPERVISE_ENDPOINT"):
        return os.environ["SUPERVISE_ENDPOINT"]
    from supervise.supervisor.config.locate import control_endpoint_of

    path = config or DEFAULT_CONFIG
    found = control_endpoint_of(path)
    if found is not None:
        return found
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        return load_config(path).supervisor.control_endpoint
    except ConfigError as e:
        raise CliError(f"cannot find the supervisor from {path}:\n{e}") from None


def _curve_keys(ctx_obj: dict[str, Any]) -> dict[str, str]:
    """--curve-key and --server-key (or $SUPERVISE_CURVE_KEY, $SUPERVISE_SERVER_KEY), for a tcp:// endpoint.

    Without --server-key, a supervisor found through its config file gives its
    own: the public NAME.key next to its curve_server_key.
    """
    curve_key, server_key = ctx_obj.get("curve_key"), ctx_obj.get("server_key")
    if curve_key is None and server_key is None:
        return {}
    if server_key is None and not ctx_obj.get("endpoint") and not os.environ.get("SUPERVISE_ENDPOINT"):
        server_key = _server_key_of_config(ctx_obj.get("config") or DEFAULT_CONFIG)
    if curve_key is None or server_key is None:
        raise CliError(
            "--curve-key FILE (this client's NAME.key_secret) and --server-key FILE (the "
            "supervisor's public key) go together",
            Exit.USAGE,
        )
    return {"curve_key": curve_key, "server_key": server_key}


def _server_key_of_config(path: str) -> str | None:
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        secret = load_config(path).supervisor.curve_server_key
    except ConfigError:
        return None
    if secret is None:
        return None
    public = secret.with_suffix(".key")
    return str(public if public.is_file() else secret)  # the secret file holds the public key too


def _client(ctx_obj: dict[str, Any]) -> Any:
    from supervise.protocol.client import Client

    endpoint = _endpoint(ctx_obj.get("config"), ctx_obj.get("endpoint"))
    keys = _curve_keys(ctx_obj) if endpoint.startswith("tcp://") else {}
    try:
        return Client(
            endpoint,
            timeout_s=ctx_obj.get("timeout", 10.0),
            curve_key=keys.get("curve_key"),
            server_key=keys.get("server_key"),
        )
    except ValueError as e:  # a key file that cannot be used (KeyFileError)
        raise CliError(str(e)) from None


def _call(ctx_obj: dict[str, Any], cmd: str, **args: object) -> Any:
    from supervise.protocol.errors import ClientTimeout, RemoteError

    with _client(ctx_obj) as client:
        try:
            return client.call(cmd, **args)
        except ClientTimeout as e:
            hint = ""
            if client.endpoint.startswith("tcp://"):
                hint = (
                    "\n(a supervisor with CURVE refuses unknown keys the same way: is this client's public key in its "
                    "curve_clients, and --server-key its public key?)"
                    if ctx_obj.get("curve_key")
                    else "\n(if the supervisor uses CURVE, pass --curve-key FILE and --server-key FILE)"
                )
            raise CliError(str(e) + hint, Exit.UNREACHABLE) from None
        except RemoteError as e:
            raise CliError(f"{e.message} ({e.code})") from None


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Keep a client option that commands do not take as a parameter (see `_obj`)."""
    if value is not None and param.name is not None:
        ctx.meta[f"supervise.{param.name}"] = value


_client_options = [
    click.option(
        "-c", "--config", "config", type=click.Path(dir_okay=False), help="config file (default ./supervise.toml)"
    ),
    click.option("--endpoint", help="control endpoint, e.g. ipc:///path/control.sock (overrides -c)"),
    click.option("--timeout", type=float, default=None, help="seconds to wait for the supervisor's reply"),
    click.option(
        "--curve-key",
        type=click.Path(dir_okay=False),
        envvar="SUPERVISE_CURVE_KEY",
        expose_value=False,
        callback=_remember,
        help="tcp:// with CURVE: this client's secret key file (NAME.key_secret; env SUPERVISE_CURVE_KEY)",
    ),
    click.option(
        "--server-key",
        type=click.Path(dir_okay=False),
        envvar="SUPERVISE_SERVER_KEY",
        expose_value=False,
        callback=_remember,
        help="tcp:// with CURVE: the supervisor's public key file (env SUPERVISE_SERVER_KEY)",
    ),
]


def client_options(func: Any) -> Any:
    for option in reversed(_client_options):
        func = option(func)
    return func


def json_option(func: Any) -> Any:
    """`--json`: print the result as JSON instead of text (each command's shape is in docs/cli.md)."""
    return click.option("--json", "as_json", is_flag=True, help="print the result as JSON (see docs/cli.md)")(func)


def _print(result: Any, as_json: bool, text: Any) -> None:
    """`result` as indented JSON, or `text(result)` (a string or lines) for people."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    shown = text(result)
    click.echo(shown if isinstance(shown, str) else "\n".join(shown))


def _obj(config: str | None, endpoint: str | None, timeout: float | None) -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return {
        "config": config,
        "endpoint": endpoint,
        "timeout": timeout if timeout is not None else 30.0,
        "curve_key": meta.get("supervise.curve_key"),
        "server_key": meta.get("supervise.server_key"),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="supervise")
def cli() -> None:
    """supervise: a process supervisor and job scheduler.

    \b
    supervise start CONFIG.toml        run the daemon in the foreground
    supervise status -c CONFIG.toml    what every service is doing
    """


def _show(cmd: str, name: str | None, as_json: bool, obj: dict[str, Any], render: Any, **extra: object) -> None:
    """Call a read-only command about every service (or one) and print it as JSON or a table."""
    result = _call(obj, cmd, **({"name": name} if name else {}), **extra)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))


def _json_arg(value: str | None, option: str) -> dict[str, object] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise CliError(f"{option}: not valid JSON ({e})", Exit.USAGE) from None
    if not isinstance(parsed, dict):
        raise CliError(f'{option}: expected a JSON object like \'{{"region": "eu"}}\'', Exit.USAGE)
    return parsed
