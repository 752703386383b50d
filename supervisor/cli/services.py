"""`supervise` commands on services: status, stop / restart / pause / resume, shutdown, ping, check, list, keygen."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from supervise.supervisor.cli.base import (
    DEFAULT_CONFIG,
    CliError,
    Exit,
    _call,
    _obj,
    _print,
    _show,
    cli,
    client_options,
    json_option,
)


def service_command(cmd: str, name: str | None, all_: bool, obj: dict[str, Any], as_json: bool = False) -> None:
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
        service_command(cmd, name, all_, _obj(config, endpoint, timeout), as_json)


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
