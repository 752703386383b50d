"""Changes to a running supervisor: add, remove, update, scale and reload.

`RuntimeChanges` works on the daemon's service table and, through the
`ChangesHost` port, on its config, store, scheduler and start order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.config.cluster import ClusterConfig
from supervise.supervisor.config.loader import (
    ServiceConfig,
    diff_configs,
    load_config,
    parse_service,
)
from supervise.supervisor.config.patch import patch_table
from supervise.supervisor.config.placement import placement_problems
from supervise.supervisor.core import state as core
from supervise.supervisor.core.errors import ConfigProblem
from supervise.supervisor.daemon.runtime import (
    POLICY_FIELDS,
    PROCESS_FIELDS,
    ServiceRuntime,
    runs_per_process,
    service_spec,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from supervise.supervisor.daemon.cluster_registrations import ClusterRegistrations
    from supervise.supervisor.daemon.ports import ChangesHost
    from supervise.supervisor.daemon.registry import ServiceTable

log = logging.getLogger("supervise")


def config_declared(command: str, name: str) -> ProtocolError:
    """The error for a runtime change of a service declared in the config file (cluster mode)."""
    return ProtocolError(
        ErrorCode.CONFLICT,
        f"{command}: {name} is declared in this node's config file; in cluster mode runtime changes apply to "
        "every node and only to services added at runtime: change it in the config file of every node and reload",
    )


class Singletons(Protocol):
    """The cluster's singleton placements, as changes at runtime need them (`ClusterAgent`)."""

    def add_placement(self, name: str, placement: str) -> None:
        """Compete for a copy of a service added here: the node that takes one starts it."""
        ...

    async def remove_placement(self, name: str, stop: Callable[[], Awaitable[object]]) -> None:
        """Stop competing for `name`, `stop` its copy here, then give its lease back."""
        ...


def check_placement(cfg: ServiceConfig, cluster: ClusterConfig | None) -> None:
    """The `placement` key of a service added or updated at runtime, checked as the config file's is."""
    for path, message in placement_problems({cfg.name: cfg}, cluster, None):
        raise ProtocolError(ErrorCode.BAD_ARGS, f"{'.'.join(path)}: {message}")


class RuntimeChanges:
    """add / remove / update / scale / reload: a registered service changes without a restart of supervise."""

    def __init__(self, host: ChangesHost, services: ServiceTable) -> None:
        self._host = host
        self._services = services
        self.shared: ClusterRegistrations | None = None  # cluster mode: runtime services are the cluster's
        self.singletons: Singletons | None = None  # cluster mode: placements "one" / "any:N"

    async def add(self, name: str, table: Mapping[str, Any]) -> dict[str, object]:
        """Register, persist and start a service described by a config table (same keys and checks)."""
        if name in self._services:
            raise ProtocolError(ErrorCode.CONFLICT, f'a service named "{name}" exists; use update or remove it first')
        cfg = parse_service(name, table, base_dir=self._host.config.base_dir, source=f"add {name}")
        missing = [d for d in cfg.requires if d not in self._services]
        if missing:
            raise ProtocolError(ErrorCode.BAD_ARGS, f'add: services.{name}.requires: unknown service "{missing[0]}"')
        unknown = [c for c in (cfg.notify.to if cfg.notify else ()) if c not in self._host.config.notify.channels]
        if unknown:  # docs/notifications.md
            raise ProtocolError(ErrorCode.BAD_ARGS, f'add: services.{name}.notify.to: unknown channel "{unknown[0]}"')
        cfg = replace(cfg, origin="runtime")
        check_placement(cfg, self._host.config.cluster)
        if self.shared is not None:  # docs/cluster.md: every node adds it
            await self.shared.add(name, table, lambda: self._add_config_service(cfg))
        else:
            assert self._host.store is not None
            self._host.store.put_registration(name, dict(table))
            self._add_config_service(cfg)
        log.info("%s: added at runtime", name)
        return {"name": name, "state": self._host.shown_state(self._services[name])}

    async def remove(self, name: str) -> dict[str, object]:
        """Stop a service as `stop` does, then forget it (and its runtime registration)."""
        svc = self._services.require(name)
        if self.shared is None:
            return await self._remove(name)
        if not self.shared.owns(svc.config.name):
            raise config_declared("remove", name)
        self._check_removable(name)
        return await self.shared.remove(svc.config.name, lambda: self._remove(name, persist=False, check=False))

    def _check_removable(self, name: str) -> None:
        dependents = [n for n, s in self._services.items() if name in s.config.requires]
        if dependents:
            raise ProtocolError(
                ErrorCode.CONFLICT, f"{name} is required by {', '.join(dependents)}; remove those first"
            )

    async def _remove(self, name: str, *, persist: bool = True, check: bool = True) -> dict[str, object]:
        self._services.require(name)
        if check:
            self._check_removable(name)
        instances = self._services.expand(name)
        if self.singletons is not None:  # its copy stops here; the lease is given back after
            await self.singletons.remove_placement(name, lambda: self._host.act("stop", instances, wait=True))
        else:
            await self._host.act("stop", instances, wait=True)
        if self._host.scheduler is not None:
            self._host.scheduler.remove(name, cancel_waiting=True)
        for instance_name in instances:
            self._host.forget(instance_name)
        if persist and self._host.store is not None:
            self._host.store.delete_registration(name)
        log.info("%s: removed", name)
        self._host.notify()
        return {"name": name, "removed": True}

    async def update(
        self, name: str, table: Mapping[str, Any], *, unset: Sequence[str] = (), replace_all: bool = False
    ) -> dict[str, object]:
        """Change a service's settings; restarts it only if its process would differ.

        The keys of `table` are set and those in `unset` removed; the others keep their
        values, and the merged table is validated as a whole. With `replace_all`,
        `table` is the service's whole new table.
        """
        old = self._services.require(name)
        if self.shared is not None and not self.shared.owns(old.config.name):
            raise config_declared("update", name)
        if not replace_all and not old.config.table:
            raise ProtocolError(
                ErrorCode.CONFLICT,
                f"update: {name} was built in code without a table to patch; give its whole table with replace",
            )
        table = patch_table(old.config.table, table, unset, replace=replace_all, service=name)
        source = f"update {name}"
        warnings: list[ConfigProblem] = []
        cfg = parse_service(name, table, base_dir=self._host.config.base_dir, source=source, warnings=warnings)
        cfg = replace(cfg, origin=old.config.origin)
        check_placement(cfg, self._host.config.cluster)
        if cfg.placement != old.config.placement:
            raise ProtocolError(
                ErrorCode.BAD_ARGS,
                f'services.{name}.placement: cannot change from "{old.config.placement}" to "{cfg.placement}" '
                "by update; remove the service and add it again",
            )
        if self.shared is not None:  # docs/cluster.md: every node applies it
            changed = await self.shared.update(old.config.name, table, lambda: self._replace(name, cfg))
        else:
            changed = await self._replace(name, cfg)
            if old.config.origin == "runtime" and self._host.store is not None:
                self._host.store.put_registration(name, dict(table))
        shown = [p.render(source) for p in warnings]
        return {
            "name": name,
            "changed": changed,
            "state": self._host.shown_state(self._services[name]),
            "warnings": shown,
        }

    async def _replace(self, name: str, cfg: ServiceConfig) -> list[str]:
        """Swap in a new config for a service; restart it when a process setting changed."""
        svc = self._services.require(name)
        changed = [f for f in PROCESS_FIELDS | POLICY_FIELDS if getattr(svc.config, f) != getattr(cfg, f)]
        if cfg.schedule != svc.config.schedule and self._host.scheduler is not None:
            self._host.scheduler.remove(name)
            if cfg.schedule is not None:
                self._host.scheduler.add(name, cfg.schedule, python=not runs_per_process(cfg))
                self._host.scheduler.arm(name)
        if cfg.processes != svc.config.processes:
            changed.append("processes")
            await self.scale(name, cfg.processes)
        instances = self._services.expand(name)
        alive = [n for n in instances if self._services[n].record.state in core.ALIVE]
        for instance_name in instances:
            runtime = self._services[instance_name]
            runtime.config, runtime.spec = cfg, service_spec(cfg)
        if alive and any(f in PROCESS_FIELDS for f in changed):
            await self._host.act("restart", alive, wait=True)
        return sorted(changed)

    async def reload(self, *, dry_run: bool = False) -> dict[str, object]:
        """Re-read the config file and apply only the difference; a broken file changes nothing."""
        if self._host.config.source.startswith("<"):
            raise ProtocolError(ErrorCode.CONFLICT, "this supervisor was built from a dict; there is no file to reload")
        new = load_config(self._host.config.source)  # ConfigError -> the reply, and nothing changed
        diff = diff_configs(self._host.config, new)
        plan: dict[str, Any] = {
            "added": list(diff.added),
            "removed": [n for n in diff.removed if self._origin(n) == "config"],
            "changed": {n: list(keys) for n, keys in diff.changed.items()},
            "unchanged": list(diff.unchanged),
            "supervisor_keys_needing_restart": list(diff.supervisor),
            "warnings": [p.render(new.source) for p in new.warnings],
        }
        if dry_run:
            return plan
        for warning in plan["warnings"]:
            log.warning("reload: %s", warning)
        for name in plan["removed"]:
            await self._remove(name)
        for name in diff.changed:
            await self._replace(name, new.services[name])
        for name in diff.added:
            if name in self._services:  # a runtime service of that name: the config's wins
                if self.shared is not None:  # here only: the cluster keeps it (shadowed on this node)
                    self.shared.applied.pop(name, None)
                await self._remove(name, persist=self.shared is None, check=False)
            self._add_config_service(new.services[name])
        self._host.config = replace(new, supervisor=self._host.config.supervisor)
        log.info("reloaded %s: %s", new.source, plan)
        return plan

    def _add_config_service(self, cfg: ServiceConfig) -> None:
        self._host.register(cfg)
        if self._compete(cfg):
            return  # started by the node that takes its lease
        if cfg.autostart:
            self._host.start_in_order([cfg.name])

    def _compete(self, cfg: ServiceConfig) -> bool:
        """A singleton (cluster mode): this node competes for a copy; False for any other service."""
        if self.singletons is None or cfg.placement == "every":
            return False
        self.singletons.add_placement(cfg.name, cfg.placement)
        return True

    def _origin(self, name: str) -> str | None:
        svc = self._services.get(name)
        return svc.config.origin if svc is not None else None

    async def scale(self, name: str, processes: int) -> dict[str, object]:
        """Run `processes` instances of a service: start new ones, stop and drop the highest ones."""
        svc = self._services.require(name)
        if svc.config.schedule is not None:
            raise ProtocolError(ErrorCode.CONFLICT, f"{name} is scheduled; scale applies to long-running services")
        current = self._services.expand(svc.config.name)
        table = MappingProxyType({**svc.config.table, "processes": processes})  # a later update keeps the scale
        cfg = replace(svc.config, processes=processes, table=table)
        for instance_name in current:
            self._services[instance_name].config = cfg
        if processes > len(current):
            added = []
            for i in range(len(current), processes):
                runtime = ServiceRuntime(cfg, service_spec(cfg), instance=i)
                self._services[runtime.name] = runtime
                added.append(runtime.name)
            self._host.start_in_order(added)
        else:
            dropped = current[processes:]
            await self._host.act("stop", dropped, wait=True)
            for instance_name in dropped:
                self._host.forget(instance_name)
        self._host.notify()
        return {"name": svc.config.name, "processes": processes, "instances": self._services.expand(svc.config.name)}

    # -- the cluster's runtime services, applied here (daemon/cluster_registrations.py) ------------

    def local_names(self) -> set[str]:
        """Services here that are not runtime services of the cluster (declared in the config)."""
        shared = self.shared
        return {s.config.name for s in self._services.values() if shared is None or not shared.owns(s.config.name)}

    def adopt(self, name: str, spec: Mapping[str, Any], *, start: bool) -> None:
        """Register a runtime service another node added (or, at start, any); start it if asked."""
        cfg = parse_service(name, spec, base_dir=self._host.config.base_dir, source="cluster registration", warnings=[])
        cfg = replace(cfg, origin="runtime")
        if start:
            self._add_config_service(cfg)
        else:
            self._host.register(cfg)
            self._compete(cfg)

    async def adopt_update(self, name: str, spec: Mapping[str, Any]) -> None:
        """A runtime service updated through another node: replaced here as `update` does."""
        cfg = parse_service(name, spec, base_dir=self._host.config.base_dir, source="cluster registration", warnings=[])
        await self._replace(name, replace(cfg, origin="runtime"))

    async def drop(self, name: str) -> None:
        """A runtime service removed through another node: stopped and forgotten here."""
        await self._remove(name, persist=False, check=False)

    def set_paused(self, name: str, paused: bool) -> None:
        """A scheduled service paused or resumed through another node: its schedule here follows."""
        scheduler = self._host.scheduler
        described = scheduler.describe(name) if scheduler is not None else None
        if scheduler is not None and described is not None and described.get("paused") is not paused:
            (scheduler.pause if paused else scheduler.resume)(name)
