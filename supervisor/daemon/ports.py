"""The ports: what each part of the daemon needs from the rest, as small `typing.Protocol`s.

The scheduler, the control commands, observability, status rows and runtime
changes are typed on these, never on the concrete `Supervisor`, which is the
one object that implements them all (the composition root). A test can hand a
part a small fake instead of a whole supervisor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from supervise.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from supervise.protocol.codec import Prepacked
    from supervise.supervisor.config.model import Config, ServiceConfig
    from supervise.supervisor.config.schedule import ScheduleConfig
    from supervise.supervisor.core.runs import Run, RunState
    from supervise.supervisor.daemon.processes import Worker
    from supervise.supervisor.daemon.runtime import ServiceRuntime
    from supervise.supervisor.store.queued import QueuedStore

ExitCallback = Callable[["Worker", "int | None", "int | None"], None]
"""Called with (worker, exit code, signal) once a process is reaped."""


class HeldElsewhere(ProtocolError):
    """Cluster mode: the run is in flight on another node; the command must go there."""

    def __init__(self, node: str, run_id: str) -> None:
        super().__init__(ErrorCode.CONFLICT, f"run {run_id} runs on node {node}")
        self.node = node


class SchedulerHost(Protocol):
    """What the scheduler needs from the daemon: the wall clock, events, and the service's workers."""

    def wall(self) -> datetime:
        """The current wall-clock time, timezone-aware."""
        ...

    def publish(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        """Emit an event of `kind` about `service`."""
        ...

    def notice(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        """Decide the notifications of an event about to be published (`publish` follows once its
        row is committed), so that they are written in the open `together()` group."""
        ...

    def worker_ready(self, name: str) -> bool:
        """The service's warm worker is up and has said hello."""
        ...

    def send_run(self, name: str, **fields: object) -> None:
        """Hand a run to the service's warm worker."""
        ...

    def send_cancel(self, name: str, run_id: str) -> None:
        """Ask the service's warm worker to cancel a run."""
        ...

    def expand(self, name: str) -> list[str]:
        """The instance names of a service (`processes = N` warm workers share its runs)."""
        ...

    def kill_worker(self, name: str, reason: str) -> None:
        """SIGKILL the service's warm worker's process group now and start a fresh one."""
        ...

    def spawn_run_process(
        self, name: str, env: Mapping[str, str], on_exit: ExitCallback, *, fence_until: float | None = None
    ) -> Worker:
        """Start one execution of a scheduled service in a process of its own; OSError if it cannot start.
        `fence_until` (cluster mode, a leased run): the orphan guard SIGKILLs its process group at
        that CLOCK_MONOTONIC time unless a lease renewal moves it."""
        ...


class ScheduleView(Protocol):
    """What status rows read of the scheduler."""

    def describe(self, name: str) -> dict[str, object] | None:
        """A scheduled service's trigger, next fire, last run and counters; None if it has no schedule."""
        ...


class ScheduleControl(ScheduleView, Protocol):
    """What the control commands, `act` and runtime changes call on the scheduler."""

    def has(self, name: str) -> bool: ...
    async def written(self) -> bool: ...
    async def keep_up(self) -> None: ...
    def figures(self, name: str) -> dict[str, object]: ...
    def add(self, name: str, config: ScheduleConfig, *, python: bool) -> None: ...
    def arm(self, name: str) -> None: ...
    def remove(self, name: str, *, cancel_waiting: bool = False) -> None: ...
    def pause(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def run_now(self, name: str, args: Mapping[str, Any] | None) -> Run: ...
    def cancel(self, run_id: str) -> Run: ...
    def skip_next(self, name: str) -> str | None: ...
    def next_fires(self, name: str, count: int) -> list[str]: ...
    def schedule_at(self, name: str, at: datetime, args: Mapping[str, Any] | None) -> str: ...
    async def schedule_many(self, name: str, entries: list[tuple[datetime, Mapping[str, Any] | None]]) -> list[str]: ...
    def cancel_oneshot(self, oneshot_id: str) -> bool: ...
    def backfill(self, name: str, start: datetime, end: datetime, limit: int = 1000) -> list[str]: ...


class ObservabilityApi(Protocol):
    """What the control commands read from observability."""

    def metrics(self, name: str | None = None) -> dict[str, Any]: ...
    def events_since(self, seq: int, *, service: str | None, limit: int) -> object: ...
    def logs(self, name: str, lines: int) -> dict[str, Any]: ...


class ServiceView(Protocol):
    """The daemon's services as observability reads them."""

    @property
    def config(self) -> Config: ...

    @property
    def bad_worker_messages(self) -> int: ...

    def service_names(self) -> list[str]:
        """Every instance name, in registration order."""
        ...

    def require(self, name: str) -> ServiceRuntime:
        """The runtime of `name` (a service or one instance); ServiceNotFound otherwise."""
        ...

    def runtimes(self) -> Mapping[str, ServiceRuntime]:
        """Every instance by name, in registration order; read it, never change it."""
        ...

    def ping(self) -> dict[str, object]:
        """The supervisor's pid, version, uptime and endpoints."""
        ...

    @property
    def scheduler(self) -> ScheduleControl | None: ...

    def control_counters(self) -> dict[str, int]:
        """Control requests refused or dropped, by reason."""
        ...


class ChangesHost(Protocol):
    """What runtime changes (add, remove, update, scale, reload) need from the daemon."""

    config: Config  # replaced by a reload

    @property
    def scheduler(self) -> ScheduleControl | None: ...

    @property
    def store(self) -> QueuedStore | None: ...

    def register(self, cfg: ServiceConfig) -> list[str]:
        """Add a service's instances (and its schedule); returns their names."""
        ...

    def forget(self, name: str) -> None:
        """Drop a stopped instance."""
        ...

    def start_in_order(self, names: list[str]) -> None:
        """Start services once what they require is RUNNING."""
        ...

    def notify(self) -> None:
        """Something changed: wake whoever waits on a state change."""
        ...

    def shown_state(self, svc: ServiceRuntime) -> str:
        """The state `status` shows for a service."""
        ...

    async def act(self, command: str, names: list[str], *, wait: bool = True) -> dict[str, object]:
        """start / stop / restart / pause / resume, optionally waiting until done."""
        ...


class ControlApi(ServiceView, Protocol):
    """What the control commands call: the daemon as a client of the control socket sees it."""

    @property
    def observability(self) -> ObservabilityApi: ...

    def expand(self, name: str) -> list[str]:
        """The instance names of a service."""
        ...

    def status(self, name: str | None = None, *, detail: bool = False) -> dict[str, object]:
        """The `status` reply."""
        ...

    def status_prepacked(self) -> Prepacked:
        """The `status` reply of every service, its rows encoded (the control socket's form)."""
        ...

    async def act(self, command: str, names: list[str], *, wait: bool = True) -> dict[str, object]:
        """start / stop / restart / pause / resume, optionally waiting until done."""
        ...

    async def forward(self, node: str, command: str, args: Mapping[str, object]) -> object:
        """Cluster mode: relay a command to the node that holds what it names; its reply."""
        ...

    def require_scheduler(self, name: str) -> ScheduleControl:
        """The scheduler, if `name` is a scheduled service; ProtocolError (conflict) otherwise."""
        ...

    def runs(self, name: str | None, states: set[RunState] | None, limit: int) -> list[dict[str, object]]:
        """Run history, newest first."""
        ...

    async def add(self, name: str, table: Mapping[str, Any]) -> dict[str, object]: ...
    async def remove(self, name: str) -> dict[str, object]: ...
    async def drop_tenant(self, tenant: str) -> dict[str, object]:
        """Close and delete a tenant's own history store."""
        ...

    async def update(
        self, name: str, table: Mapping[str, Any], *, unset: Sequence[str] = (), replace_all: bool = False
    ) -> dict[str, object]: ...
    async def scale(self, name: str, processes: int) -> dict[str, object]: ...
    async def reload(self, *, dry_run: bool = False) -> dict[str, object]: ...

    def request_shutdown(self) -> None:
        """Stop every service and the daemon."""
        ...

    async def notifications(self, *, failed_only: bool, limit: int) -> list[dict[str, object]]:
        """The notifications outbox, newest first."""
        ...


__all__ = [
    "ChangesHost",
    "ControlApi",
    "ExitCallback",
    "ObservabilityApi",
    "ScheduleControl",
    "ScheduleView",
    "SchedulerHost",
    "ServiceView",
]
