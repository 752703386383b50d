"""The `supervise` command: the daemon, and a thin client of its control socket.

Imports are lazy: `supervise status` loads only click, the codec and pyzmq, so it
answers quickly. Every `SuperviseError` becomes a clean one-line message and an
exit code from `Exit`, in one place (`main`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

# Each of these modules registers its commands on `cli` when imported.
from supervise.supervisor.cli import changes, cluster, observe, runs  # noqa: F401
from supervise.supervisor.cli import services as service_commands
from supervise.supervisor.cli.base import (
    DEFAULT_CONFIG,
    CliError,
    Exit,
    _obj,
    cli,
    client_options,
    json_option,
)
from supervise.supervisor.cli.serve import LOG_FORMATS, LOG_LEVELS, StartFailed, run_daemon, serve


@cli.command()
@click.argument("target", required=False)
@click.option("--all", "all_", is_flag=True, help="start every service of a running supervisor")
@client_options
@click.option("--log-level", default="info", type=click.Choice(LOG_LEVELS))
@click.option(
    "--log-format", default="text", type=click.Choice(LOG_FORMATS), help="the daemon's own log: text or JSON lines"
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
        with _start_errors():
            run_daemon(target or DEFAULT_CONFIG, log_level, log_format)
    service_commands.service_command("start", target, all_, _obj(config, endpoint, timeout), as_json)


@contextmanager
def _start_errors() -> Iterator[None]:
    """A daemon that cannot start (`cli.serve.StartFailed`) ends the command with its message and code."""
    try:
        yield
    except StartFailed as e:
        raise CliError(e.message, e.code) from None


@cli.command(name="run-service")
@click.argument("name")
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--log-level", default="info", type=click.Choice(LOG_LEVELS))
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
    with _start_errors():
        serve(replace(cfg, supervisor=supervisor, services={name: service}), log_level)


def _add_commands() -> None:
    from supervise.supervisor.cli.api_admin import audit, token
    from supervise.supervisor.cli.export import export
    from supervise.supervisor.cli.tenants import tenant

    cli.add_command(token)
    cli.add_command(audit)
    cli.add_command(export)
    cli.add_command(tenant)


_add_commands()


def main() -> None:
    cli(prog_name="supervise")


if __name__ == "__main__":
    main()
