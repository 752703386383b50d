"""The `supervise` command: the daemon, and a thin client of its control socket.

Imports are lazy: `supervise status` loads only click, the codec and pyzmq, so it
answers quickly. Every `SuperviseError` becomes a clean one-line message and an
exit code from `Exit`, in one place (`main`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import click

from supervise.protocol.version import VERSION

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
        # click declares exit_code on the class (a ClassVar from click 8.5); this error's code is its own
        self.__dict__["exit_code"] = int(code)


# -- finding the daemon --------------------------------------------------------


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


# -- commands ------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="supervise")
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
@click.option(
    "--log-format", default="text", type=click.Choice(["text", "json"]), help="the daemon's own log: text or JSON lines"
)
@json_option
def start(
    target: str | None,
    all_: bool,
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
    log_level: str,
    log_format: str,
    as_json: bool,
) -> None:
    """Run the daemon on a config, or start a service of a running one.

    \b
    supervise start [CONFIG.toml]            the daemon (default ./supervise.toml)
    supervise start NAME|--all -c CONFIG     start services in a running daemon
    """
    is_daemon = not all_ and (target is None or target.endswith(".toml") or Path(target).is_file())
    if is_daemon and config is None and endpoint is None:
        if as_json:
            raise CliError(
                "start: --json is for starting services of a running supervisor (start NAME -c CONFIG)", Exit.USAGE
            )
        _run_daemon(target or DEFAULT_CONFIG, log_level, log_format)
        return
    _service_command("start", target, all_, _obj(config, endpoint, timeout), as_json)


def _run_daemon(path: str, log_level: str, log_format: str = "text") -> NoReturn:
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        config = load_config(path)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None
    _serve(config, log_level, log_format)


def _serve(config: Any, log_level: str, log_format: str = "text") -> NoReturn:
    """Run a supervisor for `config` in the foreground until SIGTERM/SIGINT or `shutdown`."""
    import asyncio

    from supervise.supervisor.core.errors import AlreadyRunning, ConfigError
    from supervise.supervisor.daemon.descriptors import raise_open_files_limit
    from supervise.supervisor.daemon.logformat import configure_logging
    from supervise.supervisor.daemon.manager_notify import ManagerNotifier
    from supervise.supervisor.daemon.supervisor import Supervisor

    configure_logging(log_level, log_format)
    for problem in config.warnings:
        logging.getLogger("supervise").warning("%s", problem.render(config.source))
    before, after = raise_open_files_limit()  # connections cost descriptors; docs/security.md
    if after != before:
        logging.getLogger("supervise").debug("open files limit raised from %d to %d", before, after)
    supervisor = Supervisor(config, handle_signals=True)
    manager = ManagerNotifier.from_environ()  # under systemd (Type=notify): before any worker inherits it

    def running_status() -> str:
        services: Any = supervisor.status()["services"]
        states = [s["state"] for s in services]
        return f"{states.count('RUNNING')} of {len(states)} services running"

    async def run() -> None:
        await supervisor.start()
        told = None
        if manager is not None:
            told = asyncio.create_task(manager.serve(supervisor.startup_settled, running_status))
        try:
            await supervisor.serve_forever()
        finally:
            if told is not None:
                told.cancel()

    try:
        asyncio.run(run())
    except AlreadyRunning as e:
        raise CliError(str(e)) from None
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None
    sys.exit(Exit.FAILED if supervisor.forced_stop else Exit.OK)


def _service_command(cmd: str, name: str | None, all_: bool, obj: dict[str, Any], as_json: bool = False) -> None:
    if all_ == (name is not None):
        raise CliError(f"{cmd}: give a service NAME or --all", Exit.USAGE)
    args: dict[str, object] = {"all": True} if all_ else {"name": name}
    result = _call(obj, cmd, **args)
    _print(result, as_json, lambda r: [f"{svc}: {state}" for svc, state in r["services"].items()])


def _make_service_command(cmd: str, help_text: str) -> None:
    @cli.command(name=cmd, help=help_text)
    @click.argument("name", required=False)
    @click.option("--all", "all_", is_flag=True, help="every service")
    @client_options
    @json_option
    def command(
        name: str | None, all_: bool, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
    ) -> None:
        _service_command(cmd, name, all_, _obj(config, endpoint, timeout), as_json)


_make_service_command("stop", "Stop a service (stop_signal, then SIGKILL after stop_timeout).")
_make_service_command("restart", "Restart a service.")
_make_service_command("pause", "Pause a service (Python: cooperative; command: SIGSTOP).")
_make_service_command("resume", "Resume a paused service.")


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--detail", is_flag=True, help="with --json: also each service's configuration facts and counters")
@client_options
def status(
    name: str | None, as_json: bool, detail: bool, config: str | None, endpoint: str | None, timeout: float | None
) -> None:
    """Show every service's (or one's) state, pid, restarts, uptime and last error."""
    from supervise.supervisor.cli.render import status_table

    extra = {"detail": True} if detail else {}
    _show("status", name, as_json, _obj(config, endpoint, timeout), status_table, **extra)


def _show(cmd: str, name: str | None, as_json: bool, obj: dict[str, Any], render: Any, **extra: object) -> None:
    """Call a read-only command about every service (or one) and print it as JSON or a table."""
    result = _call(obj, cmd, **({"name": name} if name else {}), **extra)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render(result))


@cli.command()
@client_options
@json_option
def shutdown(config: str | None, endpoint: str | None, timeout: float | None, as_json: bool) -> None:
    """Stop every service and the supervisor."""
    result = _call(_obj(config, endpoint, timeout), "shutdown")
    _print(result, as_json, lambda r: "supervisor shutting down")


@cli.command()
@client_options
@json_option
def ping(config: str | None, endpoint: str | None, timeout: float | None, as_json: bool) -> None:
    """Check that the supervisor answers."""
    result = _call(_obj(config, endpoint, timeout), "ping")
    _print(result, as_json, lambda r: f"supervise {r['version']} (pid {r['pid']}) up {r['uptime']:.0f}s")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="exit 1 on warnings too (a command's executable missing now)")
@json_option
def check(config: str, strict: bool, as_json: bool) -> None:
    """Validate a config file without starting anything; exit 1 listing every problem.

    Warnings (a command whose executable is missing now: that service fails to spawn,
    the others start) are printed on stderr and leave the exit status 0, or 1 with --strict.
    """
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        if as_json:
            problems = [{"key": p.key, "problem": p.problem, "line": p.line, "column": p.column} for p in e.problems]
            click.echo(json.dumps({"config": config, "ok": False, "problems": problems}, indent=2))
            sys.exit(Exit.FAILED)
        raise CliError(f"config error:\n{e}") from None
    warnings = [{"key": p.key, "problem": p.problem, "line": p.line, "column": p.column} for p in cfg.warnings]
    result = {"config": config, "ok": True, "services": list(cfg.services), "warnings": warnings}
    _print(
        result, as_json, lambda r: f"{config}: ok, {len(cfg.services)} services ({', '.join(cfg.services) or 'none'})"
    )
    if not as_json:
        for problem in cfg.warnings:
            click.echo(f"warning: {problem.render(config)}", err=True)
    if strict and cfg.warnings:
        if not as_json:
            click.echo(f"{config}: {len(cfg.warnings)} warning(s), and --strict makes them fail the check", err=True)
        sys.exit(Exit.FAILED)


@cli.command()
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="where to write the two files (created 0700)",
)
@json_option
def keygen(name: str, directory: str, as_json: bool) -> None:
    """Create a CURVE key pair NAME.key (public) and NAME.key_secret (0600), for tcp:// endpoints."""
    import re

    from supervise.protocol.curve import read_public_key
    from supervise.supervisor.daemon.curve import create_key_pair

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
        raise CliError(
            f'keygen: NAME becomes a file name; use letters, digits, "_", "-" and ".", got "{name}"', Exit.USAGE
        )
    try:
        public, secret = create_key_pair(Path(directory), name)
    except (FileExistsError, OSError) as e:
        raise CliError(f"keygen: {e}") from None
    if as_json:
        click.echo(
            json.dumps(
                {"public": str(public), "secret": str(secret), "public_key": read_public_key(public).decode()}, indent=2
            )
        )
        return
    click.echo(f"created {public} (public key {read_public_key(public).decode()})")
    click.echo(f"    and {secret} (secret key, mode 0600: keep it private, never copy it elsewhere)")
    click.echo("Where the public key goes:")
    click.echo(f"  a client's key:     copy {public.name} into the supervisor's curve_clients directory")
    click.echo("                      (or curve_readonly_clients, for read-only commands); then connect with")
    click.echo(f"                      --curve-key {secret} --server-key <the supervisor's .key>")
    click.echo(f'  the supervisor\'s:   [supervisor] curve_server_key = "{secret}"; give {public.name} to clients')
    click.echo("                      for their --server-key")


# -- scheduling ----------------------------------------------------------------


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


@cli.command(name="run")
@click.argument("name")
@click.option("--args", "args_json", help="keyword arguments of this run, as a JSON object")
@client_options
@json_option
def run_now(
    name: str, args_json: str | None, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """Run a scheduled service now; prints the run id."""
    args: dict[str, object] = {"name": name}
    extra = _json_arg(args_json, "--args")
    if extra is not None:
        args["args"] = extra
    result = _call(_obj(config, endpoint, timeout), "run", **args)
    suffix = f" ({result['reason']})" if result.get("reason") else ""
    _print(result, as_json, lambda r: f"{r['run_id']} {r['state']}{suffix}")


@cli.command()
@click.argument("run_id")
@client_options
@json_option
def cancel(run_id: str, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool) -> None:
    """Cancel a run (cooperatively, then by force after cancel_grace)."""
    result = _call(_obj(config, endpoint, timeout), "cancel", run_id=run_id)
    _print(result, as_json, lambda r: f"{r['run_id']} {r['state']} (cancelling)")


@cli.command()
@click.argument("name")
@client_options
@json_option
def skip(name: str, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool) -> None:
    """Skip the next occurrence of a scheduled service."""
    result = _call(_obj(config, endpoint, timeout), "skip", name=name)
    _print(result, as_json, lambda r: f"{name}: skipping the occurrence at {r['skipping'] or 'the next fire time'}")


@cli.command(name="next")
@click.argument("name")
@click.option("--count", "-n", type=click.IntRange(1, 1000), default=5, show_default=True)
@client_options
@json_option
def next_fires(
    name: str, count: int, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """The next fire times of a scheduled service."""
    result = _call(_obj(config, endpoint, timeout), "next", name=name, count=count)
    _print(result, as_json, lambda r: r["next"])


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--state", help="only runs in this state (pending, queued, running, succeeded, failed, skipped, lost, ...)"
)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@client_options
def runs(
    name: str | None,
    state: str | None,
    limit: int,
    as_json: bool,
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
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
    from supervise.supervisor.cli.render import runs_table

    click.echo(runs_table(result["runs"]))


@cli.command()
@click.option("--failed", is_flag=True, help="only notifications given up on")
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@client_options
def notifications(
    failed: bool, limit: int, as_json: bool, config: str | None, endpoint: str | None, timeout: float | None
) -> None:
    """The notifications outbox, newest first: what was sent, what is retried, what failed."""
    result = _call(_obj(config, endpoint, timeout), "notifications", failed=failed, limit=limit)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    from supervise.supervisor.cli.render import notifications_table

    click.echo(notifications_table(result["notifications"]))


@cli.command()
@click.argument("name")
@click.option("--at", "at", required=True, help="ISO-8601 datetime with offset, e.g. 2026-12-01T09:00:00+01:00")
@click.option("--args", "args_json", help="keyword arguments of that run, as a JSON object")
@client_options
@json_option
def schedule(
    name: str,
    at: str,
    args_json: str | None,
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Add a one-shot occurrence of a service at a datetime (kept across restarts)."""
    args: dict[str, object] = {"name": name, "at": at}
    extra = _json_arg(args_json, "--args")
    if extra is not None:
        args["args"] = extra
    result = _call(_obj(config, endpoint, timeout), "schedule", **args)
    _print(
        result,
        as_json,
        lambda r: f"{name}: one-shot run {r['id']} at {r['at']} (pending: see `supervise runs {name} --state pending`)",
    )


@cli.command()
@click.argument("name")
@click.option("--from", "start", required=True, help="ISO-8601 datetime with offset")
@click.option("--to", "end", required=True, help="ISO-8601 datetime with offset")
@client_options
@json_option
def backfill(
    name: str, start: str, end: str, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """Run every occurrence of a schedule between two datetimes, in order."""
    result = _call(_obj(config, endpoint, timeout), "backfill", name=name, **{"from": start, "to": end})
    _print(result, as_json, lambda r: f"{name}: {len(r['run_ids'])} runs queued")


# -- observability (docs/observability.md) -------------------------------------


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@client_options
def metrics(name: str | None, as_json: bool, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """CPU, memory, restarts, exits by cause, runs and custom metrics of every service (or one)."""
    from supervise.supervisor.cli.top import metrics_table

    _show("metrics", name, as_json, _obj(config, endpoint, timeout), metrics_table)


@cli.command()
@click.option(
    "--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True, help="seconds between redraws"
)
@click.option("--once", is_flag=True, help="print one frame and exit")
@client_options
@json_option
def top(
    interval: float, once: bool, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """A live view of every service: state, pid, CPU, memory, restarts. q or Ctrl-C quits.

    With --json: one frame's figures (the metrics reply), then exit.
    """
    from supervise.supervisor.cli.top import run_top

    obj = _obj(config, endpoint, timeout if timeout is not None else 5.0)
    if as_json:
        click.echo(json.dumps(_call(obj, "metrics"), indent=2, default=str))
        return
    run_top(lambda: _call(obj, "metrics"), interval_s=interval, once=once)


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(event, default=str))
        return
    from datetime import datetime

    when = datetime.fromtimestamp(float(event.get("ts", 0))).strftime("%H:%M:%S.%f")[:-3]
    skip = {"v", "seq", "ts", "service", "kind", "message"}
    detail = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    text = f"{when} #{event.get('seq')} {event.get('service')} {event.get('kind')} {detail}".rstrip()
    if event.get("message") and event.get("kind") != "error":
        text += f"  ({event['message']})"
    click.echo(text)


@cli.command()
@click.option("--service", help="only this service's events")
@click.option("--since", type=click.IntRange(min=0), help="first replay the kept events after this sequence number")
@click.option("--follow/--no-follow", default=True, show_default=True, help="keep printing new events")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@client_options
def events(
    service: str | None,
    since: int | None,
    follow: bool,
    as_json: bool,
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
) -> None:
    """Print the supervisor's events (state changes, exits, restarts, ...) as they happen.

    \b
    supervise events -c CONFIG                      follow from now
    supervise events --since 0 --no-follow --json   what the replay ring holds
    """
    import zmq

    from supervise.protocol.codec import unpack
    from supervise.protocol.limits import REPLY_LIMITS

    obj = _obj(config, endpoint, timeout)
    info = _call(obj, "ping")
    filters: dict[str, object] = {"service": service} if service else {}
    last = int(info.get("event_seq", 0)) if since is None else since

    def replay() -> None:
        nonlocal last
        while True:
            result = _call(obj, "events", since=last, **filters)
            if result.get("missed"):
                click.echo(f"({result['missed']} events after #{last} are no longer kept)", err=True)
            for event in result["events"]:
                _print_event(event, as_json)
                last = max(last, int(event["seq"]))
            if not result.get("more"):
                last = max(last, int(result["last_seq"]))
                return

    if not follow:
        replay()
        return
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, f"{service}.".encode() if service else b"")
    keys = _curve_keys(obj) if str(info["events"]).startswith("tcp://") else {}
    if keys:
        from supervise.protocol.curve import apply_client_keys, load_client_keys

        apply_client_keys(sub, load_client_keys(keys["curve_key"], keys["server_key"]))
    sub.connect(str(info["events"]))
    try:
        # A SUB socket's subscription takes effect a little after connect (ZeroMQ's slow
        # joiner), and PUB drops at its high-water mark: whenever the stream is quiet for
        # a moment, ask the replay ring for anything after the last seq printed.
        replay()
        while True:
            if not sub.poll(500):
                replay()
                continue
            _topic, body = sub.recv_multipart()
            event = unpack(body, REPLY_LIMITS, what="event")
            assert isinstance(event, dict)
            seq = int(event.get("seq", 0))
            if seq <= last:
                continue
            if seq > last + 1 and not service:
                replay()  # the PUB socket dropped some (its HWM): fetch them from the ring
                if seq <= last:
                    continue
            _print_event(event, as_json)
            last = seq
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(linger=0)
        zctx.term()


@cli.command()
@click.argument("name")
@click.option(
    "-n", "--lines", type=click.IntRange(0, 10_000), default=100, show_default=True, help="how many last lines"
)
@click.option("-f", "--follow", is_flag=True, help="keep printing what the service writes (across rotation)")
@client_options
@click.option("--json", "as_json", is_flag=True, help='one JSON object per line: {"service": NAME, "line": TEXT}')
def logs(
    name: str, lines: int, follow: bool, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """Show a service's captured stdout/stderr; -f follows it."""
    import time

    result = _call(_obj(config, endpoint, timeout), "logs", name=name, lines=lines)
    for line in result["lines"]:
        click.echo(json.dumps({"service": name, "line": line}) if as_json else line)
    if not follow:
        return
    from supervise.supervisor.daemon.logtail import Follower

    follower = Follower(Path(result["path"]), offset=result["offset"], inode=result["inode"])
    out = sys.stdout.buffer
    partial = b""
    try:
        while True:
            data = follower.read()
            if data and as_json:
                *complete, partial = (partial + data).split(b"\n")
                for raw in complete:
                    click.echo(json.dumps({"service": name, "line": raw.decode(errors="replace")}))
            elif data:
                out.write(data)
                out.flush()
            else:
                time.sleep(0.2)  # following a file: there is nothing to wait on but the clock
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        follower.close()


# -- runtime changes -------------------------------------------------------------


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, object]:
    """`key=value` pairs; the value is read as TOML ("10s", 5, true, ["a"]), else taken as text."""
    import tomllib

    table: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f'--set expects key=value, got "{pair}"', Exit.USAGE)
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        table[key.strip()] = value
    return table


@cli.command()
@click.argument("name")
@click.option("--command", "command_line", help='an executable and its arguments, e.g. "redis-server --port 7001"')
@click.option("--target", help='a Python target, "pkg.module:function"')
@click.option("--every", help='run on an interval, e.g. "10s"')
@click.option("--cron", help='run on a cron expression, e.g. "0 2 * * *"')
@click.option("--critical", is_flag=True, help="restart it whenever it fails")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="any other service key (repeatable)")
@client_options
@json_option
def add(
    name: str,
    command_line: str | None,
    target: str | None,
    every: str | None,
    cron: str | None,
    critical: bool,
    sets: tuple[str, ...],
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Register and start a service in a running supervisor (kept across its restarts)."""
    if (command_line is None) == (target is None):
        raise CliError("add: give exactly one of --command or --target", Exit.USAGE)
    spec = _parse_sets(sets)
    spec.update(
        {k: v for k, v in (("command", command_line), ("target", target), ("every", every), ("cron", cron)) if v}
    )
    if critical:
        spec["critical"] = True
    result = _call(_obj(config, endpoint, timeout), "add", name=name, spec=spec)
    _print(result, as_json, lambda r: f"{r['name']}: added, {r['state']}")


@cli.command()
@click.argument("name")
@client_options
@json_option
def remove(name: str, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool) -> None:
    """Stop a service and deregister it."""
    result = _call(_obj(config, endpoint, timeout), "remove", name=name)
    _print(result, as_json, lambda r: f"{name}: removed")


@cli.command()
@click.argument("name")
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="set a key; the others keep their values (repeatable)"
)
@click.option("--unset", "unsets", multiple=True, metavar="KEY", help="remove a key: it takes its default (repeatable)")
@click.option("--replace", "replace_all", is_flag=True, help="the --set keys are the whole new service table")
@client_options
@json_option
def update(
    name: str,
    sets: tuple[str, ...],
    unsets: tuple[str, ...],
    replace_all: bool,
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Change some of a service's keys; it restarts only if its process would differ.

    \b
    supervise update nightly --set cron="30 2 * * *"     one key; the rest are kept
    supervise update web --unset max_memory              back to its default
    supervise update web --replace --set command="..."   the whole table
    """
    if not sets and not unsets:
        raise CliError("update: give --set KEY=VALUE and/or --unset KEY", Exit.USAGE)
    if replace_all and unsets:
        raise CliError(
            "update: --unset has no meaning with --replace (the --set keys are the whole service)", Exit.USAGE
        )
    args: dict[str, object] = {"name": name, "spec": _parse_sets(sets)}
    if unsets:
        args["unset"] = list(unsets)
    if replace_all:
        args["replace"] = True
    result = _call(_obj(config, endpoint, timeout), "update", **args)
    _print(result, as_json, lambda r: f"{name}: {r['state']}; changed: {', '.join(r['changed']) or 'nothing'}")


@cli.command()
@click.argument("name")
@click.argument("processes", type=click.IntRange(1, 1000))
@client_options
@json_option
def scale(
    name: str, processes: int, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """Run PROCESSES identical worker processes of a service."""
    result = _call(_obj(config, endpoint, timeout), "scale", name=name, processes=processes)
    _print(result, as_json, lambda r: f"{name}: {r['processes']} processes ({', '.join(r['instances'])})")


@cli.command()
@click.option("--dry-run", is_flag=True, help="only print what would change")
@client_options
@json_option
def reload(dry_run: bool, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool) -> None:
    """Re-read the config file and apply the difference (SIGHUP does the same)."""
    plan = _call(_obj(config, endpoint, timeout), "reload", dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(plan, indent=2, default=str))
        return
    verb = "would" if dry_run else "did"
    for what in ("added", "removed"):
        for name in plan[what]:
            click.echo(f"{name}: {verb} {'start (added)' if what == 'added' else 'stop (removed)'}")
    for name, keys in plan["changed"].items():
        click.echo(f"{name}: {verb} apply changed {', '.join(keys)}")
    for name in plan["unchanged"]:
        click.echo(f"{name}: unchanged")
    for warning in plan.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if plan["supervisor_keys_needing_restart"]:
        keys = ", ".join(plan["supervisor_keys_needing_restart"])
        click.echo(f"[supervisor] {keys} changed: restart the supervisor to apply")


@cli.command(name="list")
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@json_option
def list_services(config: str, as_json: bool) -> None:
    """List the services a config file defines (no supervisor needed)."""
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}") from None
    if as_json:
        rows = [
            {
                "name": name,
                "command": list(svc.command) if svc.command else None,
                "target": svc.target,
                "schedule": svc.schedule.trigger.describe() if svc.schedule else None,
            }
            for name, svc in cfg.services.items()
        ]
        click.echo(json.dumps({"services": rows}, indent=2))
        return
    for name, svc in cfg.services.items():
        what = " ".join(svc.command) if svc.command else svc.target
        when = f"  [{svc.schedule.trigger.describe()}]" if svc.schedule else ""
        click.echo(f"{name}  {what}{when}")


@cli.command(name="run-service")
@click.argument("name")
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def run_service(name: str, config: str, log_level: str) -> None:
    """Run exactly one service of a config in the foreground, with its own supervisor.

    For one-container-per-service deployments. Its state directory is
    <state_dir>/<NAME>, so several can run from one config side by side.
    """
    from dataclasses import replace

    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None
    if name not in cfg.services:
        raise CliError(
            f'no service named "{name}" in {config}; it has: {", ".join(cfg.services) or "none"}', Exit.CONFIG
        )
    from supervise.protocol.endpoints import default_endpoints

    state_dir = cfg.supervisor.state_dir / name
    endpoints = default_endpoints(state_dir)
    supervisor = replace(
        cfg.supervisor,
        state_dir=state_dir,
        control_endpoint=endpoints.control,
        workers_endpoint=endpoints.workers,
        events_endpoint=endpoints.events,
    )
    service = replace(cfg.services[name], requires=())
    _serve(replace(cfg, supervisor=supervisor, services={name: service}), log_level)


def _add_commands() -> None:
    from supervise.supervisor.cli.api_admin import audit, token
    from supervise.supervisor.cli.export import export

    cli.add_command(token)
    cli.add_command(audit)
    cli.add_command(export)


_add_commands()


def main() -> None:
    cli(prog_name="supervise")


if __name__ == "__main__":
    main()
