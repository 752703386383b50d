"""`supervise` commands that change services at runtime: add, remove, update, scale, reload."""

from __future__ import annotations

import json

import click

from supervise.supervisor.cli.base import (
    CliError,
    Exit,
    _call,
    _obj,
    _print,
    cli,
    client_options,
    json_option,
)


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
