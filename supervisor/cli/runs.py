"""`supervise` commands on scheduled runs: run, cancel, skip, next, runs, schedule, backfill, notifications."""

from __future__ import annotations

import json

import click

from supervise.supervisor.cli.base import (
    _call,
    _json_arg,
    _obj,
    _print,
    cli,
    client_options,
    json_option,
)


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
