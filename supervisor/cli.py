"""The `supervise` command: the daemon, and a thin client of its control socket.

Imports are lazy: `supervise status` loads only click, the codec and pyzmq, so it
answers quickly. Every `SuperviseError` becomes a clean one-line message and an
exit code from `Exit`, in one place (`main`).
"""

from __future__ import annotations

import json
import os
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import click

DEFAULT_CONFIG = "supervise.toml"


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the command was refused, or a config is invalid (`check`)
    USAGE = 2  # bad command line (click's own code)
    UNREACHABLE = 3  # no supervisor answered at the endpoint
    CONFIG = 78  # EX_CONFIG: the daemon cannot start with this config; don't restart it in a loop


class CliError(click.ClickException):
    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.exit_code = int(code)


# -- finding the daemon --------------------------------------------------------


def _endpoint(config: str | None, endpoint: str | None) -> str:
    """--endpoint, else $SUPERVISE_ENDPOINT, else the control endpoint of -c FILE (./supervise.toml)."""
    if endpoint:
        return endpoint
    if os.environ.get("SUPERVISE_ENDPOINT"):
        return os.environ["SUPERVISE_ENDPOINT"]
    from supervise.supervisor.config import load_config
    from supervise.supervisor.errors import ConfigError

    path = config or DEFAULT_CONFIG
    try:
        return load_config(path).supervisor.control_endpoint
    except ConfigError as e:
        raise CliError(f"cannot find the supervisor from {path}:\n{e}") from None


def _client(ctx_obj: dict[str, Any]) -> Any:
    from supervise.protocol.client import Client

    return Client(_endpoint(ctx_obj.get("config"), ctx_obj.get("endpoint")), timeout_s=ctx_obj.get("timeout", 10.0))


def _call(ctx_obj: dict[str, Any], cmd: str, **args: object) -> Any:
    from supervise.protocol.errors import ClientTimeout, RemoteError

    with _client(ctx_obj) as client:
        try:
            return client.call(cmd, **args)
        except ClientTimeout as e:
            raise CliError(str(e), Exit.UNREACHABLE) from None
        except RemoteError as e:
            raise CliError(f"{e.message} ({e.code})") from None


_client_options = [
    click.option("-c", "--config", "config", type=click.Path(dir_okay=False), help="config file (default ./supervise.toml)"),
    click.option("--endpoint", help="control endpoint, e.g. ipc:///path/control.sock (overrides -c)"),
    click.option("--timeout", type=float, default=None, help="seconds to wait for the supervisor's reply"),
]


def client_options(func: Any) -> Any:
    for option in reversed(_client_options):
        func = option(func)
    return func


def _obj(config: str | None, endpoint: str | None, timeout: float | None) -> dict[str, Any]:
    return {"config": config, "endpoint": endpoint, "timeout": timeout if timeout is not None else 30.0}


# -- commands ------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="supervise")
def cli() -> None:
    """supervise: a process supervisor and job scheduler.

    \b
    supervise start CONFIG.toml        run the daemon in the foreground
    supervise status -c CONFIG.toml    what every service is doing
    """


@cli.command()
@click.argument("target", required=False)
@click.option("--all", "all_", is_flag=True, help="start every service of a running supervisor")
@client_options
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def start(
    target: str | None, all_: bool, config: str | None, endpoint: str | None, timeout: float | None, log_level: str
) -> None:
    """Run the daemon on a config, or start a service of a running one.

    \b
    supervise start [CONFIG.toml]            the daemon (default ./supervise.toml)
    supervise start NAME|--all -c CONFIG     start services in a running daemon
    """
    is_daemon = not all_ and (target is None or target.endswith(".toml") or Path(target).is_file())
    if is_daemon and config is None and endpoint is None:
        _run_daemon(target or DEFAULT_CONFIG, log_level)
        return
    _service_command("start", target, all_, _obj(config, endpoint, timeout))


def _run_daemon(path: str, log_level: str) -> NoReturn:
    import asyncio
    import logging

    from supervise.supervisor.errors import AlreadyRunning, ConfigError
    from supervise.supervisor.supervisor import Supervisor

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        supervisor = Supervisor.from_file(path, handle_signals=True)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None

    async def run() -> None:
        await supervisor.start()
        await supervisor.serve_forever()

    try:
        asyncio.run(run())
    except AlreadyRunning as e:
        raise CliError(str(e)) from None
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None
    sys.exit(Exit.OK)


def _service_command(cmd: str, name: str | None, all_: bool, obj: dict[str, Any]) -> None:
    if all_ == (name is not None):
        raise CliError(f"{cmd}: give a service NAME or --all", Exit.USAGE)
    args: dict[str, object] = {"all": True} if all_ else {"name": name}
    result = _call(obj, cmd, **args)
    for svc, state in result["services"].items():
        click.echo(f"{svc}: {state}")


def _make_service_command(cmd: str, help_text: str) -> None:
    @cli.command(name=cmd, help=help_text)
    @click.argument("name", required=False)
    @click.option("--all", "all_", is_flag=True, help="every service")
    @client_options
    def command(name: str | None, all_: bool, config: str | None, endpoint: str | None, timeout: float | None) -> None:
        _service_command(cmd, name, all_, _obj(config, endpoint, timeout))


_make_service_command("stop", "Stop a service (stop_signal, then SIGKILL after stop_timeout).")
_make_service_command("restart", "Restart a service.")
_make_service_command("pause", "Pause a service (Python: cooperative; command: SIGSTOP).")
_make_service_command("resume", "Resume a paused service.")


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@client_options
def status(name: str | None, as_json: bool, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Show every service's (or one's) state, pid, restarts, uptime and last error."""
    args: dict[str, object] = {"name": name} if name else {}
    result = _call(_obj(config, endpoint, timeout), "status", **args)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    from supervise.supervisor.render import status_table

    click.echo(status_table(result))


@cli.command()
@client_options
def shutdown(config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Stop every service and the supervisor."""
    _call(_obj(config, endpoint, timeout), "shutdown")
    click.echo("supervisor shutting down")


@cli.command()
@client_options
def ping(config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Check that the supervisor answers."""
    result = _call(_obj(config, endpoint, timeout), "ping")
    click.echo(f"supervise {result['version']} (pid {result['pid']}) up {result['uptime']:.0f}s")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate a config file without starting anything; exit 1 listing every problem."""
    from supervise.supervisor.config import load_config
    from supervise.supervisor.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}") from None
    click.echo(f"{config}: ok, {len(cfg.services)} services ({', '.join(cfg.services) or 'none'})")


# -- scheduling ----------------------------------------------------------------


def _json_arg(value: str | None, option: str) -> dict[str, object] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise CliError(f"{option}: not valid JSON ({e})", Exit.USAGE) from None
    if not isinstance(parsed, dict):
        raise CliError(f"{option}: expected a JSON object like '{{\"region\": \"eu\"}}'", Exit.USAGE)
    return parsed


@cli.command(name="run")
@click.argument("name")
@click.option("--args", "args_json", help="keyword arguments of this run, as a JSON object")
@client_options
def run_now(name: str, args_json: str | None, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Run a scheduled service now; prints the run id."""
    args: dict[str, object] = {"name": name}
    extra = _json_arg(args_json, "--args")
    if extra is not None:
        args["args"] = extra
    result = _call(_obj(config, endpoint, timeout), "run", **args)
    suffix = f" ({result['reason']})" if result.get("reason") else ""
    click.echo(f"{result['run_id']} {result['state']}{suffix}")


@cli.command()
@click.argument("run_id")
@client_options
def cancel(run_id: str, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Cancel a run (cooperatively, then by force after cancel_grace)."""
    result = _call(_obj(config, endpoint, timeout), "cancel", run_id=run_id)
    click.echo(f"{result['run_id']} {result['state']} (cancelling)")


@cli.command()
@click.argument("name")
@client_options
def skip(name: str, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Skip the next occurrence of a scheduled service."""
    result = _call(_obj(config, endpoint, timeout), "skip", name=name)
    click.echo(f"{name}: skipping the occurrence at {result['skipping'] or 'the next fire time'}")


@cli.command(name="next")
@click.argument("name")
@click.option("--count", "-n", type=click.IntRange(1, 1000), default=5, show_default=True)
@client_options
def next_fires(name: str, count: int, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """The next fire times of a scheduled service."""
    for when in _call(_obj(config, endpoint, timeout), "next", name=name, count=count)["next"]:
        click.echo(when)


@cli.command()
@click.argument("name", required=False)
@click.option("--state", help="only runs in this state (succeeded, failed, skipped, lost, ...)")
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@client_options
def runs(
    name: str | None, state: str | None, limit: int, as_json: bool, config: str | None, endpoint: str | None, timeout: float | None
) -> None:
    """Run history, newest first."""
    args: dict[str, object] = {"limit": limit}
    if name:
        args["name"] = name
    if state:
        args["state"] = state
    result = _call(_obj(config, endpoint, timeout), "runs", **args)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    from supervise.supervisor.render import runs_table

    click.echo(runs_table(result["runs"]))


@cli.command()
@click.argument("name")
@click.option("--at", "at", required=True, help="ISO-8601 datetime with offset, e.g. 2026-12-01T09:00:00+01:00")
@click.option("--args", "args_json", help="keyword arguments of that run, as a JSON object")
@client_options
def schedule(name: str, at: str, args_json: str | None, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Add a one-shot occurrence of a service at a datetime (kept across restarts)."""
    args: dict[str, object] = {"name": name, "at": at}
    extra = _json_arg(args_json, "--args")
    if extra is not None:
        args["args"] = extra
    result = _call(_obj(config, endpoint, timeout), "schedule", **args)
    click.echo(f"{name}: one-shot {result['id']} at {result['at']}")


@cli.command()
@click.argument("name")
@click.option("--from", "start", required=True, help="ISO-8601 datetime with offset")
@click.option("--to", "end", required=True, help="ISO-8601 datetime with offset")
@client_options
def backfill(name: str, start: str, end: str, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """Run every occurrence of a schedule between two datetimes, in order."""
    result = _call(_obj(config, endpoint, timeout), "backfill", name=name, **{"from": start, "to": end})
    click.echo(f"{name}: {len(result['run_ids'])} runs queued")


def main() -> None:
    cli(prog_name="supervise")


if __name__ == "__main__":
    main()
