"""Changes to a running supervisor: add, remove, update, scale and reload.

`RuntimeChanges` is mixed into `Supervisor`; it works on the supervisor's
services, store and scheduler, declared below for the type checker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor import state as core
from supervise.supervisor.config import (
    Config,
    ServiceConfig,
    diff_configs,
    load_config,
    parse_service,
)
from supervise.supervisor.runtime import (
    POLICY_FIELDS,
    PROCESS_FIELDS,
    ServiceRuntime,
    runs_per_process,
    service_spec,
)

if TYPE_CHECKING:
    from supervise.supervisor.scheduler import Scheduler
    from supervise.supervisor.store.queued import QueuedStore

log = logging.getLogger("supervise")


class RuntimeChanges:
    """add / remove / update / scale / reload: a registered service changes without a restart of supervise."""

    config: Config
    scheduler: Scheduler | None
    _services: dict[str, ServiceRuntime]
    _store: QueuedStore | None
    _pending_starts: set[str]

    if TYPE_CHECKING:

        def require(self, name: str) -> ServiceRuntime: ...
        def expand(self, name: str) -> list[str]: ...
        async def act(self, command: str, names: list[str], *, wait: bool = True) -> dict[str, object]: ...
        def _notify(self) -> None: ...
        def _register(self, cfg: ServiceConfig) -> list[str]: ...
        def _start_in_order(self, names: list[str]) -> None: ...
        def _shown_state(self, svc: ServiceRuntime) -> str: ...

    async def add(self, name: str, table: Mapping[str, Any]) -> dict[str, object]:
        """Register, persist and start a service described by a config table (same keys and checks)."""
        if name in self._services:
            raise ProtocolError(ErrorCode.CONFLICT, f'a service named "{name}" exists; use update or remove it first')
        cfg = parse_service(name, table, base_dir=self.config.base_dir, source=f"add {name}")
        missing = [d for d in cfg.requires if d not in self._services]
        if missing:
            raise ProtocolError(ErrorCode.BAD_ARGS, f'add: services.{name}.requires: unknown service "{missing[0]}"')
        assert self._store is not None
        self._store.put_registration(name, dict(table))
        self._add_config_service(replace(cfg, origin="runtime"))
        log.info("%s: added at runtime", name)
        return {"name": name, "state": self._shown_state(self._services[name])}

    async def remove(self, name: str) -> dict[str, object]:
        """Stop a service as `stop` does, then forget it (and its runtime registration)."""
        self.require(name)
        dependents = [n for n, s in self._services.items() if name in s.config.requires]
        if dependents:
            raise ProtocolError(ErrorCode.CONFLICT, f"{name} is required by {', '.join(dependents)}; remove those first")
        instances = self.expand(name)
        await self.act("stop", instances, wait=True)
        if self.scheduler is not None:
            self.scheduler.remove(name, cancel_waiting=True)
        for instance_name in instances:
            self._forget(instance_name)
        if self._store is not None:
            self._store.delete_registration(name)
        log.info("%s: removed", name)
        self._notify()
        return {"name": name, "removed": True}

    def _forget(self, name: str) -> None:
        """Drop a stopped instance's runtime (its worker, if SIGKILLed late, is reaped by then)."""
        svc = self._services.pop(name)
        for handle in svc.timers.values():
            handle.cancel()
        self._pending_starts.discard(name)
        if svc.log is not None:
            svc.log.close()

    async def update(self, name: str, table: Mapping[str, Any]) -> dict[str, object]:
        """Replace a runtime service's settings; restarts it only if its process would differ."""
        old = self.require(name)
        cfg = parse_service(name, table, base_dir=self.config.base_dir, source=f"update {name}")
        changed = await self._replace(name, replace(cfg, origin=old.config.origin))
        if old.config.origin == "runtime" and self._store is not None:
            self._store.put_registration(name, dict(table))
        return {"name": name, "changed": changed, "state": self._shown_state(self._services[name])}

    async def _replace(self, name: str, cfg: ServiceConfig) -> list[str]:
        """Swap in a new config for a service; restart it when a process setting changed."""
        svc = self.require(name)
        changed = [f for f in PROCESS_FIELDS | POLICY_FIELDS if getattr(svc.config, f) != getattr(cfg, f)]
        if cfg.schedule != svc.config.schedule and self.scheduler is not None:
            self.scheduler.remove(name)
            if cfg.schedule is not None:
                self.scheduler.add(name, cfg.schedule, python=not runs_per_process(cfg))
                self.scheduler.arm(name)
        if cfg.processes != svc.config.processes:
            changed.append("processes")
            await self.scale(name, cfg.processes)
        instances = self.expand(name)
        alive = [n for n in instances if self._services[n].record.state in core.ALIVE]
        for instance_name in instances:
            runtime = self._services[instance_name]
            runtime.config, runtime.spec = cfg, service_spec(cfg)
        if alive and any(f in PROCESS_FIELDS for f in changed):
            await self.act("restart", alive, wait=True)
        return sorted(changed)

    async def reload(self, *, dry_run: bool = False) -> dict[str, object]:
        """Re-read the config file and apply only the difference; a broken file changes nothing."""
        if self.config.source.startswith("<"):
            raise ProtocolError(ErrorCode.CONFLICT, "this supervisor was built from a dict; there is no file to reload")
        new = load_config(self.config.source)  # ConfigError -> the reply, and nothing changed
        diff = diff_configs(self.config, new)
        plan: dict[str, Any] = {
            "added": list(diff.added),
            "removed": [n for n in diff.removed if self._origin(n) == "config"],
            "changed": {n: list(keys) for n, keys in diff.changed.items()},
            "unchanged": list(diff.unchanged),
            "supervisor_keys_needing_restart": list(diff.supervisor),
        }
        if dry_run:
            return plan
        for name in plan["removed"]:
            await self.remove(name)
        for name in diff.changed:
            await self._replace(name, new.services[name])
        for name in diff.added:
            if name in self._services:  # a runtime service of that name: the config's wins
                await self.remove(name)
            self._add_config_service(new.services[name])
        self.config = replace(new, supervisor=self.config.supervisor)
        log.info("reloaded %s: %s", new.source, plan)
        return plan

    def _add_config_service(self, cfg: ServiceConfig) -> None:
        self._register(cfg)
        if cfg.autostart:
            self._start_in_order([cfg.name])

    def _origin(self, name: str) -> str | None:
        svc = self._services.get(name)
        return svc.config.origin if svc is not None else None

    async def scale(self, name: str, processes: int) -> dict[str, object]:
        """Run `processes` instances of a service: start new ones, stop and drop the highest ones."""
        svc = self.require(name)
        if svc.config.schedule is not None:
            raise ProtocolError(ErrorCode.CONFLICT, f"{name} is scheduled; scale applies to long-running services")
        current = self.expand(svc.config.name)
        cfg = replace(svc.config, processes=processes)
        for instance_name in current:
            self._services[instance_name].config = cfg
        if processes > len(current):
            added = []
            for i in range(len(current), processes):
                runtime = ServiceRuntime(cfg, service_spec(cfg), instance=i)
                self._services[runtime.name] = runtime
                added.append(runtime.name)
            self._start_in_order(added)
        else:
            dropped = current[processes:]
            await self.act("stop", dropped, wait=True)
            for instance_name in dropped:
                self._forget(instance_name)
        self._notify()
        return {"name": svc.config.name, "processes": processes, "instances": self.expand(svc.config.name)}
