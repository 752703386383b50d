"""The services the daemon holds: instance name -> `ServiceRuntime`, in registration order."""

from __future__ import annotations

from supervise.supervisor.core import state as core
from supervise.supervisor.core.errors import ServiceNotFound
from supervise.supervisor.daemon.runtime import ServiceRuntime


class ServiceTable(dict[str, ServiceRuntime]):
    """Every registered instance by name; a service of `processes = N` has N entries (`web`, `web:1`, ...)."""

    def expand(self, name: str) -> list[str]:
        """The instance names of service `name` (just `name` with one process, or for an instance)."""
        svc = self.get(name)
        if svc is not None and (svc.instance != 0 or svc.config.processes == 1):
            return [name]  # an instance, or a service of one process: the common case, in O(1)
        names = [n for n, s in self.items() if s.config.name == name]
        if not names:
            raise ServiceNotFound(name, sorted({s.config.name for s in self.values()}))
        return names

    def require(self, name: str) -> ServiceRuntime:
        """The runtime of `name` (a service, or one instance of it); ServiceNotFound otherwise."""
        return self[self.expand(name)[0]]

    def running(self, service: str) -> bool:
        """Every instance of `service` is RUNNING."""
        instances = [s for s in self.values() if s.config.name == service]
        return bool(instances) and all(s.record.state is core.ServiceState.RUNNING for s in instances)

    def alive_workers(self) -> bool:
        """Some instance still has a worker process."""
        return any(s.worker is not None for s in self.values())
