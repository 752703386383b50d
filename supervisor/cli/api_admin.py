"""`supervise token create|list|revoke` and `supervise audit`: the HTTP API's tokens and audit log.

Both work on the state directory's `api.db` (docs/api.md), whether the daemon
runs or not: a token created here is usable at once, a revoked one refused at
the next request. With `[cluster]` in the config the tokens are the cluster's
table in PostgreSQL (api/cluster_tokens.py); the audit log stays the node's.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from supervise.supervisor.api.store import ApiStore

DEFAULT_CONFIG = "supervise.toml"
_config_option = click.option(
    "-c",
    "--config",
    "config",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="the daemon's config file (for its state_dir)",
)


def _store(config: str) -> ApiStore:
    from supervise.supervisor.api.store import ApiStore
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise click.ClickException(f"config error:\n{e}") from None
    if cfg.cluster is None:
        return ApiStore(cfg.supervisor.state_dir)
    from supervise.supervisor.api.open_store import open_api_store  # psycopg: cluster mode only
    from supervise.supervisor.store.base import StoreError

    try:
        return open_api_store(cfg.supervisor.state_dir, cfg.cluster, node=f"cli-{cfg.cluster.node}")
    except StoreError as e:
        raise click.ClickException(f"cannot reach the cluster store: {e}") from None


def parse_expiry(text: str) -> timedelta:
    """ "90d", "12h", "30m", "2w" -> a timedelta."""
    match = re.fullmatch(r"(\d{1,6})([mhdw])", text.strip())
    if match is None:
        raise click.BadParameter(f'expected a number and a unit m, h, d or w, like "90d"; got "{text}"')
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return timedelta(**{unit: int(match[1])})


@click.group()
def token() -> None:
    """Bearer tokens of the HTTP API (stored as hashes in the state directory, or the cluster store)."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True, help="what the token may do")
@click.option("--tenant", help="the tenant whose objects alone the token sees")
@click.option("--expires", help='lifetime, e.g. "90d", "12h" (default: never)')
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_config_option
def create(name: str, role: str, tenant: str | None, expires: str | None, as_json: bool, config: str) -> None:
    """Create a token; it is printed once and never shown again."""
    from supervise.supervisor.api.store import Role

    lifetime = parse_expiry(expires) if expires else None
    store = _store(config)
    try:
        text, row = store.create_token(name, Role.parse(role), tenant, lifetime)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"token": text, **row.as_dict()}, indent=2))
        return
    click.echo(text)
    scope = f" of tenant {row.tenant}" if row.tenant else ""
    until = f", expires {row.as_dict()['expires_at']}" if row.expires_at else ""
    click.echo(f"token {row.name} ({row.role}{scope}{until}): keep it now, it is not stored", err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_config_option
def list_tokens(as_json: bool, config: str) -> None:
    """Every token: name, id, role, tenant, dates (never the secret)."""
    store = _store(config)
    try:
        rows = [t.as_dict() for t in store.tokens()]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        status = "revoked" if r["revoked_at"] else "active"
        click.echo(
            f"{r['name']:<20} {r['id']} {r['role']:<8} tenant={r['tenant'] or '-':<12} {status:<7} "
            f"created={r['created_at']} expires={r['expires_at'] or 'never'} last_used={r['last_used_at'] or 'never'}"
        )


@token.command("revoke")
@click.argument("name_or_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_config_option
def revoke(name_or_id: str, as_json: bool, config: str) -> None:
    """Revoke a token (by name or id): refused from the next request on."""
    store = _store(config)
    try:
        done = store.revoke(name_or_id)
    finally:
        store.close()
    if not done:
        raise click.ClickException(f'no active token named or with id "{name_or_id}"')
    click.echo(json.dumps({"revoked": name_or_id}) if as_json else f"revoked {name_or_id}")


@click.command()
@click.option("--limit", "-n", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--tenant", help="only calls by this tenant's tokens")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_config_option
def audit(limit: int, tenant: str | None, as_json: bool, config: str) -> None:
    """State-changing HTTP API calls: when, who, what, and the answer's status."""
    store = _store(config)
    try:
        entries: list[dict[str, Any]] = store.audit_entries(limit, tenant)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        who = e["token"] + (f"@{e['tenant']}" if e["tenant"] else "")
        click.echo(f"{e['ts']} {who:<24} {e['method']:<6} {e['path']:<40} {e['status']} {e['remote'] or ''}")
