"""`supervise tenant create|list|export|delete`: one tenant's data, listed, exported or deleted alone.

A tenant's run history (its services' runs, one-shots, schedule state,
registrations and notifications) is a store of its own: `tenants/<tenant>/history.db`
in the state directory, or the PostgreSQL schema `<schema>_tenant_<tenant>`
(store/tenants.py). Its tokens, tasks, service ownership and audit entries are
rows of `api.db`, found by tenant-scoped queries. docs/api.md, "A tenant's data",
says what is stored where.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from supervise.supervisor.cli.base import CliError, Exit, _obj, json_option

if TYPE_CHECKING:
    from supervise.supervisor.api.store import ApiStore
    from supervise.supervisor.config.model import Config
    from supervise.supervisor.store.base import Store

EXPORT_FORMAT = "supervise.tenant-export"
EXPORT_VERSION = 1
_ALL = 10_000_000  # "every row": the history keeps far fewer per service

_config_option = click.option(
    "-c", "--config", "config", default="supervise.toml", show_default=True, help="the daemon's config file"
)


def _load(config: str) -> Config:
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    try:
        return load_config(config)
    except ConfigError as e:
        raise CliError(f"config error:\n{e}", Exit.CONFIG) from None


@contextmanager
def _api_store(cfg: Config) -> Iterator[ApiStore]:
    from supervise.supervisor.api.store import ApiStore

    if cfg.cluster is None:
        store = ApiStore(cfg.supervisor.state_dir)
    else:  # the tokens are the cluster's (docs/api.md)
        from supervise.supervisor.api.open_store import open_api_store
        from supervise.supervisor.store.base import StoreError

        try:
            store = open_api_store(cfg.supervisor.state_dir, cfg.cluster, node=f"cli-{cfg.cluster.node}")
        except StoreError as e:
            raise CliError(f"cannot reach the cluster store: {e}", Exit.UNREACHABLE) from None
    try:
        yield store
    finally:
        store.close()


def _store_url(cfg: Config) -> str | None:
    """The run history's store: the cluster's in cluster mode (docs/cluster.md)."""
    return cfg.cluster.store if cfg.cluster is not None else cfg.supervisor.store


def _cluster_services(cfg: Config, tenant: str) -> list[str]:
    """Cluster mode: the runtime services the cluster's registrations say `tenant` owns (added through
    any node); none otherwise."""
    if cfg.cluster is None:
        return []
    from supervise.supervisor.store import StoreError
    from supervise.supervisor.store.cluster_registrations import RegistrationStore

    dsn, _, schema = cfg.cluster.store.partition("?schema=")
    rows = RegistrationStore(dsn, schema=schema or "supervise", node="tenant-cli")
    try:
        return rows.open().tenant_names(tenant)  # open: the tenant column, if no node made it yet
    except StoreError as e:
        raise CliError(f"cannot read the cluster's services: {e}") from None
    finally:
        rows.close()


def _remove_in_cluster(cfg: Config, services: list[str]) -> None:
    """No daemon runs here: remove the tenant's services from the cluster's registrations (every node
    stops them, as when removed through a node)."""
    if cfg.cluster is None or not services:
        return
    from supervise.supervisor.store import StoreError
    from supervise.supervisor.store.cluster_registrations import RegistrationStore

    dsn, _, schema = cfg.cluster.store.partition("?schema=")
    rows = RegistrationStore(dsn, schema=schema or "supervise", node="tenant-cli")
    try:
        rows.open()
        for service in services:
            rows.remove(service)
    except StoreError as e:
        raise CliError(f"cannot remove the tenant's services from the cluster: {e}") from None
    finally:
        rows.close()


@contextmanager
def _own_history(cfg: Config, tenant: str) -> Iterator[Store | None]:
    """The tenant's own history store (its file, or its schema), when it has one."""
    from supervise.supervisor.store import StoreError
    from supervise.supervisor.store.tenants import tenant_places

    try:
        places = tenant_places(_store_url(cfg), cfg.supervisor.state_dir)
        if tenant not in places.existing():
            yield None
            return
        store = places.open(tenant)
    except StoreError as e:
        raise CliError(f"cannot open tenant {tenant}'s run history: {e}") from None
    with store:
        yield store


def _drop_own_history(cfg: Config, tenant: str) -> bool:
    """Delete the tenant's own history store (no daemon here holds it open); False when it has none."""
    from supervise.supervisor.store import StoreError
    from supervise.supervisor.store.tenants import tenant_places

    try:
        return tenant_places(_store_url(cfg), cfg.supervisor.state_dir).drop(tenant)
    except (StoreError, OSError) as e:
        raise CliError(f"cannot delete tenant {tenant}'s run history: {e}") from None


@contextmanager
def _history(cfg: Config) -> Iterator[Store]:
    from supervise.supervisor.store import StoreError, open_store

    try:
        store = open_store(_store_url(cfg) or cfg.supervisor.state_dir / "history.db")
        with store:
            yield store
    except StoreError as e:
        raise CliError(f"cannot open the run history: {e}") from None


def _known(store: ApiStore, tenant: str) -> None:
    if tenant not in {t["name"] for t in store.tenants()}:
        raise CliError(f'no tenant "{tenant}" (see supervise tenant list)')


@click.group()
def tenant() -> None:
    """Tenants of the HTTP API: create, list, export or delete one tenant's data."""


_quota_options = [
    click.option(
        "--max-pending-tasks",
        type=click.IntRange(min=1),
        help="its own tenant_max_pending_tasks (default: the daemon's)",
    ),
    click.option(
        "--max-runs-per-minute",
        type=click.IntRange(min=1),
        help="its own tenant_max_runs_per_minute (default: the daemon's)",
    ),
]


def quota_options(func: Any) -> Any:
    for option in reversed(_quota_options):
        func = option(func)
    return func


@tenant.command("create")
@click.argument("name")
@quota_options
@json_option
@_config_option
def create(
    name: str, max_pending_tasks: int | None, max_runs_per_minute: int | None, as_json: bool, config: str
) -> None:
    """Register a tenant (a token created with --tenant NAME registers it too)."""
    from supervise.supervisor.api.store import TenantQuotas

    quotas = TenantQuotas(max_pending_tasks, max_runs_per_minute)
    with _api_store(_load(config)) as store:
        try:
            created = store.create_tenant(name, quotas)
        except ValueError as e:
            raise CliError(str(e)) from None
    if not created:
        raise CliError(f'tenant "{name}" exists; change its quotas with supervise tenant quota')
    click.echo(json.dumps({"created": name}) if as_json else f"created tenant {name}")


@tenant.command("quota")
@click.argument("name")
@quota_options
@json_option
@_config_option
def quota(
    name: str, max_pending_tasks: int | None, max_runs_per_minute: int | None, as_json: bool, config: str
) -> None:
    """Set a tenant's own quotas (an option left out: the daemon's value); the daemon applies them within 1 s."""
    from supervise.supervisor.api.store import TenantQuotas

    with _api_store(_load(config)) as store:
        _known(store, name)
        store.create_tenant(name)  # a tenant known only from its tokens or tasks is registered first
        store.set_quotas(name, TenantQuotas(max_pending_tasks, max_runs_per_minute))
    result = {"tenant": name, "max_pending_tasks": max_pending_tasks, "max_runs_per_minute": max_runs_per_minute}
    if as_json:
        click.echo(json.dumps(result))
        return
    shown = {k: v if v is not None else "the daemon's" for k, v in result.items() if k != "tenant"}
    click.echo(f"tenant {name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))


@tenant.command("list")
@json_option
@_config_option
def list_tenants(as_json: bool, config: str) -> None:
    """Every tenant, with how many tokens, services and tasks it has."""
    with _api_store(_load(config)) as store:
        rows = store.tenants()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        own = " ".join(f"{k}={r[k]}" for k in ("max_pending_tasks", "max_runs_per_minute") if r[k] is not None)
        click.echo(
            f"{r['name']:<20} tokens={r['tokens']:<4} services={r['services']:<4} tasks={r['tasks']:<7} "
            f"created={r['created_at'] or '-'} {own}".rstrip()
        )


@tenant.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write to this file (mode 0600), not stdout")
@json_option
@_config_option
def export(name: str, output: str | None, as_json: bool, config: str) -> None:
    """Everything kept about one tenant, as one JSON document (it holds webhook secrets: keep it safe).

    The document is JSON with or without --json."""
    cfg = _load(config)
    with _api_store(cfg) as store:
        _known(store, name)
        services = sorted({*store.tenant_services(name), *_cluster_services(cfg, name)})
        document: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "tenant": name,
            "exported_at": datetime.now(UTC).isoformat(),
            **store.tenant_rows(name),
        }
    with _own_history(cfg, name) as own, _history(cfg) as shared:
        # Everything in its own store (deleted services' runs too); of the shared store, the rows of
        # its services an older version wrote there.
        document["services"] = _services([own, shared] if own is not None else [shared], services)
        document["runs"] = _runs(own, shared, services)
        document["notifications"] = _notifications(own, shared, services)
    text = json.dumps(document, indent=2, default=str)
    if output is None:
        click.echo(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    counts = ", ".join(f"{len(document[k])} {k}" for k in ("services", "runs", "tasks", "tokens", "audit"))
    click.echo(f"exported tenant {name} to {output}: {counts}", err=True)


def _services(stores: list[Store], names: list[str]) -> list[dict[str, Any]]:
    registrations: dict[str, Any] = {}
    for store in reversed(stores):  # the first store's registration wins
        registrations.update(store.list_registrations())
    return [{"name": n, "registration": registrations.get(n)} for n in names]


def _runs(own: Store | None, shared: Store, names: list[str]) -> list[dict[str, Any]]:
    from supervise.supervisor.daemon.run_views import run_to_dict

    runs = {run.run_id: run for n in names for run in shared.list_runs(n, limit=_ALL)}
    if own is not None:
        runs.update((run.run_id, run) for run in own.list_runs(limit=_ALL))
    return [run_to_dict(r) for r in sorted(runs.values(), key=lambda r: (r.created_at, r.run_id))]


def _notifications(own: Store | None, shared: Store, names: list[str]) -> list[dict[str, Any]]:
    from supervise.supervisor.daemon.notifier import notification_to_dict

    wanted = set(names)
    found = {n.id: n for n in shared.list_notifications(limit=_ALL) if n.service in wanted}
    if own is not None:
        found.update((n.id, n) for n in own.list_notifications(limit=_ALL))
    return [notification_to_dict(n) for n in sorted(found.values(), key=lambda n: (n.created_at, n.id))]


@tenant.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@json_option
@_config_option
def delete(name: str, yes: bool, as_json: bool, config: str) -> None:
    """Delete one tenant: stop and remove its services and jobs, cancel its tasks, delete its history,
    tokens and audit entries. Works whether the daemon runs or not."""
    cfg = _load(config)
    with _api_store(cfg) as store:
        _known(store, name)
        services = sorted({*store.tenant_services(name), *_cluster_services(cfg, name)})
    if not yes:
        click.confirm(
            f"delete tenant {name}: {len(services)} services and jobs, their history, its tasks and tokens?",
            abort=True,
        )
    from supervise.supervisor.core.runs import RunState

    with _daemon_or_lock(cfg, config) as daemon:
        with _own_history(cfg, name) as own:  # counted before it goes
            runs = sum(own.count_runs(s, frozenset(RunState)) for s in services) if own is not None else 0
        if daemon is not None:
            for service in services:
                _remove(daemon, service)
            dropped = bool(_drop_in_daemon(daemon, name)["dropped"])
        else:
            _remove_in_cluster(cfg, services)
            dropped = _drop_own_history(cfg, name)
        with _history(cfg) as history:  # rows an older version kept in the shared store
            runs += sum(history.forget_service(s) for s in services)
        with _api_store(cfg) as store:
            counts = store.delete_tenant(name)
    result = {"deleted": name, **counts, "services": len(services), "runs": runs, "store_deleted": dropped}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"deleted tenant {name}: {len(services)} services and jobs, {runs} runs, {counts['tasks']} tasks, "
        f"{counts['tokens']} tokens, {counts['audit']} audit entries"
    )


@contextmanager
def _daemon_or_lock(cfg: Config, config: str) -> Iterator[Any]:
    """A client of the running daemon; or, when none runs, the state directory's lock, held so none starts."""
    from supervise.supervisor.core.errors import AlreadyRunning
    from supervise.supervisor.daemon.lock import StateDirLock

    lock = StateDirLock(cfg.supervisor.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning:
        from supervise.supervisor.cli.base import _client

        with _client(_obj(config, None, 120.0)) as client:
            yield client
        return
    try:
        yield None
    finally:
        lock.release()


def _drop_in_daemon(client: Any, tenant: str) -> dict[str, Any]:
    """The running daemon closes and deletes the tenant's own history store."""
    from supervise.protocol.errors import ClientTimeout, RemoteError

    try:
        return dict(client.call("drop_tenant", tenant=tenant))
    except RemoteError as e:
        raise CliError(f"cannot delete tenant {tenant}'s run history: {e.message} ({e.code})") from None
    except ClientTimeout as e:
        raise CliError(f"{e}; its services were removed, its history and tokens not yet", Exit.UNREACHABLE) from None


def _remove(client: Any, service: str) -> None:
    """Stop and remove one service through the daemon (already gone: nothing to do)."""
    from supervise.protocol.errors import ClientTimeout, RemoteError

    try:
        client.call("remove", name=service)
    except RemoteError as e:
        if e.code != "not_found":
            raise CliError(f"cannot remove {service}: {e.message} ({e.code})") from None
    except ClientTimeout as e:
        raise CliError(f"{e}; nothing of the tenant was deleted yet but what was removed", Exit.UNREACHABLE) from None


__all__ = ["tenant"]
