"""`supervise export systemd`: write (or print) systemd units for a config's services."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["export"]


@click.group()
def export() -> None:
    """Turn a config into another service manager's files."""


@export.command()
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default="supervise.toml", show_default=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="write one file per unit here (created)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (see docs/cli.md)")
def systemd(config: str, directory: str | None, as_json: bool) -> None:
    """One systemd unit per service (and timers, sockets); exit 1 if a service has no systemd equivalent.

    Without --dir the units are printed, each after a '# FILE' line. Services that
    cannot be expressed (a cron expression OnCalendar= cannot say) are listed on
    stderr with the reason; the others are still written.
    """
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError
    from supervise.supervisor.export.systemd import export_systemd

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise click.ClickException(f"config error:\n{e}") from None
    result = export_systemd(cfg, config_path=Path(config).resolve())
    if directory is not None:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in result.units.items():
            (folder / name).write_text(text)
    if as_json:
        click.echo(json.dumps({"dir": directory, "units": result.units, "refused": result.refused}, indent=2))
    elif directory is not None:
        for name in result.units:
            click.echo(str(Path(directory) / name))
    else:
        click.echo("\n".join(f"# {name}\n{text}" for name, text in result.units.items()), nl=False)
    for name, reason in result.refused.items():
        click.echo(f"supervise export: services.{name} not exported: {reason}", err=True)
    if result.refused:
        sys.exit(1)
