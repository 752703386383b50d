"""`Supervisor`: the composition root of the daemon, around the pure per-service state machines.

It builds the daemon's parts and implements the ports they depend on
(daemon/ports.py): the worker pool (`pool`: spawning, the worker channel,
heartbeats, reaping), the scheduler, the control server and its commands,
runtime changes (`changes`), observability, notifications, hooks and the HTTP
API. It feeds I/O to the core as events (`state.step`) and carries out the
actions the core returns. Use it as `async with Supervisor(config) as sup: ...`,
or run the daemon with `supervise start CONFIG`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from supervise.protocol.codec import Prepacked
from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.protocol.version import VERSION
from supervise.supervisor.config.loader import (
    Config,
    ServiceConfig,
    load_config,
    parse_service,
)
from supervise.supervisor.core import state as core
from supervise.supervisor.core.clock import Clock, SystemClock
from supervise.supervisor.core.dependencies import stop_layers
from supervise.supervisor.core.errors import ConfigError
from supervise.supervisor.core.health import supervisor_healthy
from supervise.supervisor.core.runs import RunState
from supervise.supervisor.daemon.binding import Endpoints
from supervise.supervisor.daemon.changes import RuntimeChanges
from supervise.supervisor.daemon.commands import Command, resolve
from supervise.supervisor.daemon.control import ControlServer
from supervise.supervisor.daemon.guard_link import GuardLink
from supervise.supervisor.daemon.hooks import HeldActions, HookRunner
from supervise.supervisor.daemon.lock import StateDirLock, prepare_state_dir
from supervise.supervisor.daemon.manager_notify import startup_settled
from supervise.supervisor.daemon.notifier import Notifier
from supervise.supervisor.daemon.observability import Observability
from supervise.supervisor.daemon.pool import PoolHooks, WorkerPool
from supervise.supervisor.daemon.ports import ExitCallback
from supervise.supervisor.daemon.processes import Worker
from supervise.supervisor.daemon.registry import ServiceTable
from supervise.supervisor.daemon.runtime import (
    ServiceRuntime,
    runs_per_process,
    service_spec,
)
from supervise.supervisor.daemon.scheduler import Scheduler, run_to_dict
from supervise.supervisor.daemon.sd_notify import NotifySockets
from supervise.supervisor.daemon.status import (
    shown_state,
    status_row,
    status_row_detail,
)
from supervise.supervisor.daemon.status_wire import EncodedRows
from supervise.supervisor.daemon.tenant_history import drop_tenant, open_cluster_history, open_history
from supervise.supervisor.store import open_store
from supervise.supervisor.store.queued import QueuedStore

if TYPE_CHECKING:
    from supervise.supervisor.api import ApiServer
    from supervise.supervisor.daemon.cluster import ClusterAgent

log = logging.getLogger("supervise")


class Supervisor:
    """Supervises the services of a `Config`; an async context manager.

    Args:
        config: a `Config` (see `load_config`) or a dict in the config file's shape.
        clock: where the core's `now` comes from; tests may pass a `FakeClock`.
        rng: randomness for backoff jitter.
        handle_signals: install SIGTERM/SIGINT handlers that shut down (the daemon does;
            an embedding program keeps its own unless it asks).
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        handle_signals: bool = False,
    ) -> None:
        if not isinstance(config, Config):
            from supervise.supervisor.config.loader import parse_config

            config = parse_config(config)
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()  # nosec B311 # restart-backoff jitter, not a secret; tokens come from secrets
        self._handle_signals = handle_signals
        self._services = ServiceTable()
        self._queue: collections.deque[tuple[str, core.Event]] = collections.deque()
        self._feeding = False
        self._pending_starts: set[str] = set()  # waiting for what they require to be RUNNING
        self.forced_stop = False  # a second SIGTERM/SIGINT killed the workers: the daemon exits 1
        self._changed = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._closed = asyncio.Event()
        self._started_at = 0.0
        self._lock = StateDirLock(config.supervisor.state_dir)
        self._endpoints = Endpoints(config)
        self._control: ControlServer | None = None
        self._status_rows = EncodedRows()
        self._tasks: list[asyncio.Task[None]] = []
        self._guard = GuardLink()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.observability = Observability(
            self,
            clock=self._clock,
            sample_interval_s=config.supervisor.sample_interval_ms / 1000,
            on_over_memory=lambda name, rss, limit: self._feed(name, core.OverMemory(rss, limit)),
        )
        hooks = PoolHooks(
            feed=self._feed,
            worker_exited=self._on_worker_exited,
            hello=self._on_worker_hello,
            run_message=self._on_run_message,
            metrics=self.observability.worker_metrics,
            changed=self.notify,
            command_env=self._command_env,
            reading=self._writes_held,
        )
        self._pool = WorkerPool(
            self._services, config.supervisor, base_dir=config.base_dir, guard=self._guard, hooks=hooks
        )
        self._notify_sockets = NotifySockets(config.supervisor.state_dir, self._feed)
        self._hooks = HookRunner(
            config.supervisor,
            open_log=self._pool.open_log,
            emit=self.observability.emit,
            spawn_after=self._spawn_after_hook,
            stop_after=self._stop_after_hook,
        )
        self.changes = RuntimeChanges(self, self._services)
        self.api: ApiServer | None = None
        if config.supervisor.http is not None:
            from supervise.supervisor.api import ApiServer  # pydantic and aiohttp: only when HTTP is on

            self.api = ApiServer(
                self,
                self.observability.events,
                config.supervisor,
                samples=self.observability.samples,
                cluster=config.cluster,
            )
            self.observability.http_mounts.append(self.api.mount)
            from supervise.supervisor.dashboard import mount as mount_dashboard  # docs/dashboard.md

            self.observability.http_mounts.append(mount_dashboard)
        self.store: QueuedStore | None = None
        self.scheduler: Scheduler | None = None
        self.notifier: Notifier | None = None  # docs/notifications.md; set in start
        self.cluster: ClusterAgent | None = None  # docs/cluster.md; set in start with [cluster]
        for cfg in config.services.values():
            self.register(cfg)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Self:
        return cls(load_config(path), **kwargs)

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Take the state dir, bind the sockets, start the guard and every autostart service."""
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        sup = self.config.supervisor
        if self.config.cluster is not None:
            await self._join_cluster()  # NodeNameTaken: the daemon exits 78
        try:
            prepare_state_dir(sup.state_dir)
            self._lock.acquire()
        except BaseException:
            if self.cluster is not None:
                await self.cluster.close()  # leave at once: this node never ran anything
                self.cluster.runs.close()
                self.cluster = None
                self.changes.singletons = None
            if self.changes.shared is not None:
                await self.changes.shared.close()
                self.changes.shared = None
            raise
        try:
            self._endpoints.bind()
            await self.observability.start(self._endpoints.events)
            self._guard.start()
        except BaseException:
            await self.observability.close()
            self._endpoints.close()
            self._lock.release()
            raise
        endpoints = self._endpoints
        assert endpoints.control is not None and endpoints.workers is not None
        self._pool.open(self._loop, endpoints.workers)
        readonly = endpoints.curve.readonly_user_ids() if endpoints.curve is not None else None
        self._control = ControlServer(endpoints.control, self._dispatch_control, readonly=readonly)
        self._tasks = [
            asyncio.create_task(self._control.serve(), name="supervise-control"),
            asyncio.create_task(self._pool.beat_forever(), name="supervise-heartbeats"),
        ]
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        log.info(
            "supervise %s started (pid %d), %d services, control at %s",
            VERSION,
            os.getpid(),
            len(self._services),
            sup.control_endpoint,
        )
        self._start_scheduler()
        await self._start_notifier()
        assert self.scheduler is not None
        self.scheduler.start()  # after the notifier: the occurrences its catch-up skips are notified
        if self.changes.shared is not None:
            await self.changes.shared.load()  # the cluster's runtime services (docs/cluster.md)
        else:
            self._restore_registrations()
        assert self.scheduler is not None
        self.scheduler.arm_stored_oneshots()  # after the registrations: one-shots of runtime services too
        clustered = self.cluster.placements if self.cluster is not None else {}
        self.start_in_order([n for n, s in self._services.items() if s.config.autostart and n not in clustered])
        if self.cluster is not None:
            self.observability.cluster = self.cluster.summary
            await self.cluster.start()  # takes free singleton placements and starts them
        if self.changes.shared is not None:
            self.changes.shared.start()
        log.debug("start-up complete")

    async def _join_cluster(self) -> None:
        """Open the cluster's store and join as a node (docs/cluster.md)."""
        # Imported here: PostgreSQL's driver is ~10 MB of a daemon's memory, only in cluster mode.
        from supervise.supervisor.daemon.cluster import ClusterAgent
        from supervise.supervisor.daemon.cluster_host import ClusterBinding
        from supervise.supervisor.daemon.cluster_registrations import ClusterRegistrations
        from supervise.supervisor.store.cluster import ClusterStore
        from supervise.supervisor.store.cluster_registrations import RegistrationStore
        from supervise.supervisor.store.cluster_tenants import ClusterHistory, ClusterTenants
        from supervise.supervisor.store.leased import LeasedRuns
        from supervise.supervisor.store.postgres import PostgresStore

        cfg = self.config.cluster
        assert cfg is not None
        store = await asyncio.to_thread(open_store, cfg.store)
        assert isinstance(store, PostgresStore)
        # Each tenant's runs in a schema of its own, leased like the main schema's (docs/api.md)
        runs = ClusterHistory(
            LeasedRuns(store, node=cfg.node, lease_ttl_ms=cfg.lease_ttl_ms),
            ClusterTenants(store.dsn, store.schema, node=cfg.node, lease_ttl_ms=cfg.lease_ttl_ms),
        )
        nodes = ClusterStore(store.dsn, schema=store.schema, node=cfg.node, lease_ttl_ms=cfg.lease_ttl_ms)
        nodes.runs_by_schema = runs.runs_by_schema
        binding = ClusterBinding(
            self._services,
            feed=self._feed,
            start=self.start_in_order,
            guard=self._guard,
            scheduler=lambda: self.scheduler,
            publish=self.publish,
            execute=self._execute_relayed,
            send=lambda worker, kind, fields: (
                self._pool.send(self._services[worker], kind, **fields) if worker in self._services else None
            ),
        )
        placements = {c.name: c.placement for c in self.config.services.values()}
        self.cluster = ClusterAgent(cfg, nodes, runs, binding, placements=placements, rng=self._rng)
        try:
            await self.cluster.join()
        except BaseException:
            self.cluster = None
            nodes.close()
            store.close()
            raise
        # Runtime services are the cluster's (docs/cluster.md): set before the control socket
        # answers, so an early `add` waits for them to be loaded rather than going around them.
        rows = RegistrationStore(store.dsn, schema=store.schema, node=cfg.node, lease_ttl_ms=cfg.lease_ttl_ms)
        try:
            await asyncio.to_thread(rows.open)  # its columns: created before the sockets answer
            await asyncio.to_thread(open_cluster_history, runs, rows, self.config.supervisor.state_dir)
        except BaseException:
            rows.close()
            await self.cluster.close()
            self.cluster.runs.close()
            self.cluster = None
            raise
        self.changes.shared = ClusterRegistrations(rows, self.changes, renew_every_ms=cfg.renew_every_ms)
        self.changes.shared.tenants = runs
        self.changes.singletons = self.cluster  # runtime services may be singletons too

    async def _execute_relayed(self, name: str, args: dict[str, Any]) -> object:
        """A control command another node relayed to this one (it holds what the command names)."""
        command, valid = resolve(name, args)
        return await self._dispatch(command, valid)

    async def forward(self, node: str, command: str, args: Mapping[str, object]) -> object:
        """Relay a control command to cluster node `node` and return its reply (docs/cluster.md)."""
        if self.cluster is None:
            raise ProtocolError(
                ErrorCode.CONFLICT, f"{command}: held by node {node}, and this node is not in a cluster"
            )
        return await self.cluster.forward(node, command, dict(args))

    def _start_scheduler(self) -> None:
        url = self.config.supervisor.store
        shared = url is not None and url.startswith(("postgresql://", "postgres://"))
        if self.cluster is not None:
            queued = QueuedStore(self.cluster.runs, shared=True)  # a Store: its own run writes, the rest delegated
        else:
            queued = QueuedStore(open_history(self.config.supervisor), shared=shared)  # a store per tenant
        self.store = queued
        sup = self.config.supervisor
        self.scheduler = Scheduler(
            self,
            queued,
            history_keep=sup.history_keep,
            history_max_age_ms=sup.history_max_age_ms,
            leases=self.cluster.runs if self.cluster is not None else None,
        )
        for name, svc in self._services.items():
            if svc.config.schedule is not None and svc.instance == 0:  # one schedule for all its processes
                self.scheduler.add(name, svc.config.schedule, python=not runs_per_process(svc.config))

    async def _start_notifier(self) -> None:
        if self.store is None:
            return
        instance = self.observability.events.instance
        self.notifier = Notifier(self, self.store.store, clock=self._clock, instance=instance, writer=self.store)
        self.observability.events.listeners.append(self.notifier.observe)
        self.observability.notifications = self.notifier.summary
        if self.api is not None:
            self.api.attach(self.notifier)  # tasks' own webhooks: their channels before the first delivery
        await self.notifier.start()

    async def notifications(self, *, failed_only: bool, limit: int) -> list[dict[str, object]]:
        """The outbox, newest first (`supervise notifications`)."""
        return [] if self.notifier is None else await self.notifier.listing(failed_only=failed_only, limit=limit)

    def _restore_registrations(self) -> None:
        """Services added at runtime by an earlier run of this supervisor come back."""
        assert self.store is not None
        for name, table in self.store.list_registrations().items():
            if name in self._services:
                log.warning("runtime service %s is shadowed by the config's service of that name", name)
                continue
            try:
                cfg = parse_service(
                    name, table, base_dir=self.config.base_dir, source="runtime registration", warnings=[]
                )
            except ConfigError as e:
                log.error("runtime service %s can no longer be loaded; skipped:\n%s", name, e)
                continue
            self.register(replace(cfg, origin="runtime"))

    def register(self, cfg: ServiceConfig) -> list[str]:
        """Add a service's `processes` instances (and its schedule); returns their names."""
        names = []
        for i in range(cfg.processes):
            svc = ServiceRuntime(cfg, service_spec(cfg), instance=i)
            self._services[svc.name] = svc
            names.append(svc.name)
        if cfg.schedule is not None and self.scheduler is not None:
            self.scheduler.add(cfg.name, cfg.schedule, python=not runs_per_process(cfg))
            self.scheduler.arm(cfg.name)
        return names

    def expand(self, name: str) -> list[str]:
        """The instance names of service `name` (just `name` with one process, or for an instance)."""
        return self._services.expand(name)

    def start_in_order(self, names: list[str]) -> None:
        """Start `names` (services or instances), each once what it requires is RUNNING."""
        for name in names:
            for instance in self.expand(name):
                if not runs_per_process(self._services[instance].config):
                    self._pending_starts.add(instance)
        self._start_ready()

    def _start_ready(self) -> None:
        for name in [n for n in self._services if n in self._pending_starts]:
            svc = self._services[name]
            if all(self._services.running(d) for d in svc.config.requires):
                self._pending_starts.discard(name)
                self._feed(name, core.StartRequested())

    def request_shutdown(self) -> None:
        """Ask `serve_forever` to return (the stop itself happens in `close`)."""
        self._shutdown.set()

    async def serve_forever(self) -> None:
        """Run until `shutdown` is requested (control command or signal), then close."""
        await self._shutdown.wait()
        await self.close()

    async def close(self) -> None:
        """Stop every worker (gracefully, then SIGKILL) and release sockets and the lock."""
        if self._closed.is_set() or self._loop is None:
            return
        self._shutdown.set()
        self._pending_starts.clear()
        if self.cluster is not None:
            self.cluster.closing = True  # takes no more placements; keeps renewing until its workers are gone
        if self.changes.shared is not None:
            await self.changes.shared.close()  # applies no more changes from other nodes while stopping
        for worker in self._pool.run_processes:
            worker.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.config.supervisor.shutdown_timeout_ms / 1000
        await self._stop_in_order(deadline)
        await self._hooks.close()  # after_stop hooks of the last workers
        if not await self._wait_until(lambda: not self._pool.alive(), max(0.0, deadline - time.monotonic())):
            for svc in self._services.values():
                if svc.worker is not None:
                    log.warning("%s (pid %d) still running at shutdown_timeout; SIGKILL", svc.name, svc.worker.pid)
            self._pool.signal_all(signal.SIGKILL)
            await self._wait_until(lambda: not self._pool.alive(), 5.0)
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._loop.remove_signal_handler(sig)
        for task in self._tasks:
            task.cancel()
        if self._control is not None:
            await self._control.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for svc in self._services.values():
            for handle in svc.timers.values():
                handle.cancel()
            svc.timers.clear()
            if svc.worker is not None:
                svc.worker.output.close()
            if svc.log is not None:
                svc.log.close()
        if self.cluster is not None:
            await self.cluster.close()  # the workers are gone: give every lease back for others to take
        if self.scheduler is not None:
            self.scheduler.close()
        if self.notifier is not None:
            await self.notifier.close()
        if self.store is not None:
            self.store.close()
        await self.observability.close()
        self._guard.stop()
        self._pool.close()
        self._notify_sockets.close()
        self._endpoints.close()
        self._lock.release()
        self._closed.set()
        log.info("supervise stopped")

    async def _stop_in_order(self, deadline: float) -> None:
        """Stop every service: what requires a service stops before it (reverse start order)."""
        requires = {s.config.name: s.config.requires for s in self._services.values()}
        for layer in stop_layers(requires, list(requires)):
            instances = [n for service in layer for n in self.expand(service)]
            for name in instances:
                self._feed(name, core.StopRequested())
            await self._wait_until(partial(self._all_exited, instances), max(0.0, deadline - time.monotonic()))

    def _all_exited(self, names: list[str]) -> bool:
        return all(self._services[n].worker is None for n in names)

    def _on_sighup(self) -> None:
        async def reload() -> None:
            try:
                await self.reload()
            except ConfigError as e:
                log.error("SIGHUP: the config is invalid; nothing changed:\n%s", e)
            except Exception:
                log.exception("SIGHUP: reload failed")

        task = asyncio.create_task(reload(), name="supervise-reload")
        self._tasks.append(task)

    def _on_signal(self, sig: int) -> None:
        if self._shutdown.is_set():
            log.warning("second %s: killing every worker now", signal.Signals(sig).name)
            self.forced_stop = True
            self._pool.signal_all(signal.SIGKILL)
            return
        log.info("%s received: stopping every service", signal.Signals(sig).name)
        self._shutdown.set()

    # -- the core loop ---------------------------------------------------------

    def _feed(self, name: str, event: core.Event) -> None:
        """Queue an event for a service's state machine and run the queue to empty.

        Actions may produce events (a spawn yields `WorkerSpawned`); queuing them keeps
        every step atomic instead of re-entering `step` from inside an action.
        """
        self._queue.append((name, event))
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._queue:
                name, event = self._queue.popleft()
                svc = self._services.get(name)
                if svc is None:
                    continue
                now_ms = self._clock.monotonic_ms()
                before = svc.record.state
                svc.record, actions = core.step(svc.record, event, now_ms=now_ms, spec=svc.spec, rng=self._rng)
                for action in self._hooks.on_step(svc, before, actions):  # a stop may wait for before_stop
                    self._execute(svc, action, now_ms)
                if svc.record.state is not before:
                    self.notify()
        finally:
            self._feeding = False

    def _execute(self, svc: ServiceRuntime, action: core.Action, now_ms: int) -> None:
        match action:
            case core.Spawn(incarnation) if self.cluster is not None and not self.cluster.may_run(svc.config.name):
                # A singleton whose lease this node does not hold (or no longer trusts): never a second copy.
                self._queue.append((svc.name, core.SpawnFailed(self.cluster.holder_note(svc.config.name))))
                self._queue.append((svc.name, core.StopRequested()))
            case core.Spawn(incarnation) if svc.config.before_start is not None:
                self._hooks.before_start(svc, incarnation)  # spawns (or fails the start) when it ends
            case core.Spawn(incarnation):
                self._queue.append((svc.name, self._pool.spawn(svc, incarnation)))
            case core.SignalGroup(sig):
                if svc.worker is not None:
                    svc.worker.signal_group(sig)
            case core.SendWorker(kind):
                self._pool.send(svc, kind)
            case core.ArmTimer(timer, at_ms):
                self._arm(svc, timer, at_ms - now_ms)
            case core.CancelTimer(timer):
                handle = svc.timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case core.Emit(kind, detail, message):
                # Numbered, kept for replay, logged, counted and published (PUB drops at its HWM).
                self.observability.emit(svc.name, kind, detail, message)

    def _arm(self, svc: ServiceRuntime, timer: core.Timer, delay_ms: int) -> None:
        assert self._loop is not None
        old = svc.timers.pop(timer, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            svc.timers.pop(timer, None)
            self._feed(svc.name, core.TimerFired(timer))

        svc.timers[timer] = self._loop.call_later(max(0, delay_ms) / 1000, fire)

    def _spawn_after_hook(self, svc: ServiceRuntime, incarnation: int, failure: str | None) -> None:
        """`before_start` ended: spawn the worker, or fail the start; unless the service moved on."""
        if self._services.get(svc.name) is not svc or svc.record.incarnation != incarnation or svc.worker is not None:
            return
        self._feed(svc.name, core.SpawnFailed(failure) if failure else self._pool.spawn(svc, incarnation))

    def _stop_after_hook(self, svc: ServiceRuntime, incarnation: int, held: HeldActions) -> None:
        """`before_stop` ended: send the stop signal (and message) it held back, if still stopping."""
        record = svc.record
        if self._services.get(svc.name) is not svc or record.incarnation != incarnation:
            return
        if record.state is core.ServiceState.STOPPING:
            for action in held:
                self._execute(svc, action, self._clock.monotonic_ms())

    def _on_worker_exited(self, name: str, code: int | None, sig: int | None) -> None:
        svc = self._services.get(name)
        if svc is not None:
            self._hooks.worker_exited(svc, svc.record.pid, code, sig)
        self._feed(name, core.WorkerExited(code, sig))
        if self.scheduler is not None:
            self.scheduler.on_worker_exit(name)

    def _command_env(self, svc: ServiceRuntime) -> Mapping[str, str]:
        """What a `type = "notify"` command gets besides the worker contract: its NOTIFY_SOCKET."""
        if not svc.config.sd_notify:
            return {}
        return self._notify_sockets.env_for(svc.name, svc.config.watchdog_timeout_ms)

    def _on_worker_hello(self, name: str) -> None:
        if self.scheduler is not None:
            self.scheduler.on_worker_ready(name)

    def _writes_held(self) -> AbstractContextManager[object]:
        """While the worker channel is read: the history's writer waits, then takes the state
        changes of the whole read at once (a run's `running` and final state, read together,
        become one write)."""
        return self.store.held() if self.store is not None else contextlib.nullcontext()

    def _on_run_message(self, name: str, kind: str, fields: Mapping[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.on_worker_message(name, kind, fields)

    def notify(self) -> None:
        """Wake whoever waits for a state change; start what was waiting for it."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._pending_starts and not self._shutdown.is_set():
            self._start_ready()

    async def _wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait for a state change that makes `predicate` true; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return predicate()
        return True

    # -- what the scheduler calls ------------------------------------------------

    def wall(self) -> datetime:
        return self._clock.wall()

    def publish(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        self.observability.emit(service, kind, detail, "")

    def notice(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        if self.notifier is not None:
            self.notifier.notice(service, kind, detail)

    def worker_ready(self, name: str) -> bool:
        svc = self._services[name]
        return svc.worker is not None and svc.record.hello

    def send_run(self, name: str, **fields: object) -> None:
        self._pool.send(self._services[name], "run", **fields)

    def send_cancel(self, name: str, run_id: str) -> None:
        self._pool.send(self._services[name], "cancel", run_id=run_id)

    def kill_worker(self, name: str, reason: str) -> None:
        """SIGKILL a worker's process group now and start a fresh worker (no restart policy)."""
        self._feed(name, core.KillRequested(reason))

    def spawn_run_process(
        self, name: str, env: Mapping[str, str], on_exit: ExitCallback, *, fence_until: float | None = None
    ) -> Worker:
        """Start one execution of a scheduled service; raises OSError if it cannot start."""
        return self._pool.spawn_run_process(name, env, on_exit, fence_until=fence_until)

    # -- what runtime changes call ------------------------------------------------

    def forget(self, name: str) -> None:
        """Drop a stopped instance's runtime (its worker, if SIGKILLed late, is reaped by then)."""
        svc = self._services.pop(name)
        for handle in svc.timers.values():
            handle.cancel()
        self._pending_starts.discard(name)
        self._notify_sockets.discard(name)
        if all(other.config.name != svc.config.name for other in self._services.values()):
            self._pool.listeners.close(svc.config.name)  # its last instance: the listening sockets go too
        if svc.log is not None:
            svc.log.close()

    async def add(self, name: str, table: Mapping[str, Any]) -> dict[str, object]:
        """Register, persist and start a service described by a config table (same keys and checks)."""
        return await self.changes.add(name, table)

    async def remove(self, name: str) -> dict[str, object]:
        """Stop a service as `stop` does, then forget it (and its runtime registration)."""
        return await self.changes.remove(name)

    async def drop_tenant(self, tenant: str) -> dict[str, object]:
        """Close and delete a tenant's own history store (its services were removed first)."""
        return await drop_tenant(self.store, tenant)

    async def update(
        self, name: str, table: Mapping[str, Any], *, unset: Sequence[str] = (), replace_all: bool = False
    ) -> dict[str, object]:
        """Set the keys of `table` and remove those in `unset` (or, with `replace_all`, replace the whole table);
        restarts the service only if its process would differ."""
        return await self.changes.update(name, table, unset=unset, replace_all=replace_all)

    async def scale(self, name: str, processes: int) -> dict[str, object]:
        """Run `processes` instances of a service."""
        return await self.changes.scale(name, processes)

    async def reload(self, *, dry_run: bool = False) -> dict[str, object]:
        """Re-read the config file and apply only the difference; a broken file changes nothing."""
        return await self.changes.reload(dry_run=dry_run)

    # -- what the commands call -------------------------------------------------

    async def _dispatch(self, command: Command, args: dict[str, object]) -> object:
        return await command.handler(self, args)

    async def _dispatch_control(self, command: Command, args: dict[str, object]) -> object:
        """A command for the control socket: its reply may come encoded already (`Command.wire`)."""
        return await (command.wire or command.handler)(self, args)

    def require_scheduler(self, name: str) -> Scheduler:
        self.require(name)
        if self.scheduler is None or not self.scheduler.has(name):
            raise ProtocolError(
                ErrorCode.CONFLICT, f'service "{name}" has no schedule (add every, cron, at or manual = true)'
            )
        return self.scheduler

    def runs(self, name: str | None, states: set[RunState] | None, limit: int) -> list[dict[str, object]]:
        """Run history, newest first."""
        if name is not None:
            self.require(name)
        if self.store is None:
            return []
        return [run_to_dict(r) for r in self.store.list_runs(name, states=states, limit=limit)]

    def control_counters(self) -> dict[str, int]:
        """Control requests refused: malformed or invalid, forbidden to a read-only key; replies dropped."""
        c = self._control
        if c is None:
            return {"bad_requests": 0, "forbidden": 0, "dropped_replies": 0}
        return {"bad_requests": c.bad_requests, "forbidden": c.forbidden, "dropped_replies": c.dropped_replies}

    def ping(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "version": VERSION,
            "uptime": time.monotonic() - self._started_at,
            **self.observability.ping(),
        }

    @property
    def bad_worker_messages(self) -> int:
        """Messages on the worker channel that were malformed or not from a current worker."""
        return self._pool.bad_messages

    def service_names(self) -> list[str]:
        return list(self._services)

    def runtimes(self) -> Mapping[str, ServiceRuntime]:
        return self._services

    def require(self, name: str) -> ServiceRuntime:
        """The runtime of `name` (a service, or one instance of it); ServiceNotFound otherwise."""
        return self._services.require(name)

    def status(self, name: str | None = None, *, detail: bool = False) -> dict[str, object]:
        """Every service's (or one's) live state; with `detail`, its configuration facts and counters too."""
        names = self.expand(name) if name is not None else list(self._services)
        now_ms = self._clock.monotonic_ms()
        row = status_row_detail if detail else status_row
        resources, scheduler = self.observability.resources, self.scheduler
        return {
            "supervisor": self._status_head(),
            "services": [row(self._services[n], now_ms, resources, scheduler) for n in names],
        }

    def status_prepacked(self) -> Prepacked:
        """`status()` of every service, as the control socket sends it: each row encoded once per change."""
        now_ms = self._clock.monotonic_ms()
        services = list(self._services.values())
        obs = self.observability
        count, rows = self._status_rows.encode(services, now_ms, obs.sample_of, obs.resources, self.scheduler)
        return Prepacked({"supervisor": self._status_head()}, "services", count, rows)

    def _status_head(self) -> dict[str, object]:
        return {
            **self.ping(),
            "healthy": self.healthy(),
            **({"notifications": self.notifier.summary()} if self.notifier is not None else {}),
        }

    def startup_settled(self) -> bool:
        """Every autostart has started, failed, or waits on a service that cannot come up (READY=1 to systemd)."""
        return startup_settled(self._services, self._pending_starts)

    def healthy(self) -> bool:
        """Every critical service is healthy (core/health.py: the same verdict as `/health`)."""
        return supervisor_healthy(
            (str(s.record.state), True, s.config.schedule is not None)
            for s in self._services.values()
            if s.config.critical  # the others do not count
        )

    def shown_state(self, svc: ServiceRuntime) -> str:
        """The state `status` shows for a service (a scheduled command: SCHEDULED, RUNNING or PAUSED)."""
        return shown_state(svc, self.scheduler)

    async def act(self, command: str, names: list[str], *, wait: bool = True) -> dict[str, object]:
        """Apply start/stop/restart/pause/resume to services; with `wait`, until it is done."""
        requests: dict[str, core.Event] = {
            "start": core.StartRequested(),
            "stop": core.StopRequested(),
            "restart": core.RestartRequested(),
            "pause": core.PauseRequested(),
            "resume": core.ResumeRequested(),
        }
        event = requests[command]
        elsewhere = self._held_elsewhere(names)
        names = [n for n in names if n not in elsewhere]
        if command in ("pause", "resume") and self.changes.shared is not None and self.scheduler is not None:
            scheduled = [self._services[n].config.name for n in names if self.scheduler.has(n)]
            await self.changes.shared.set_paused(scheduled, command == "pause")  # the cluster's runtime jobs
        before = {n: self._services[n].record.incarnation for n in names}
        for name in names:
            if command in ("pause", "resume") and self.scheduler is not None and self.scheduler.has(name):
                # A scheduled service stops firing; a run in progress goes on.
                (self.scheduler.pause if command == "pause" else self.scheduler.resume)(name)
                continue
            if runs_per_process(self._services[name].config):
                continue  # start/stop of a scheduled command: its runs are driven by the schedule
            self._feed(name, event)
        if wait:
            timeout_s = max((self._wait_budget_ms(command, self._services[n].config) for n in names), default=0) / 1000
            await self._wait_until(lambda: all(self._settled(command, n, before[n]) for n in names), timeout_s)
        shown = {n: self.shown_state(self._services[n]) for n in names}
        if elsewhere:
            shown |= await self._act_elsewhere(command, elsewhere)
        return {"services": shown}

    def _held_elsewhere(self, names: list[str]) -> list[str]:
        """Instances of singletons this node holds no copy of (cluster mode)."""
        if self.cluster is None:
            return []
        return [n for n in names if not self.cluster.holds(self._services[n].config.name)]

    async def _act_elsewhere(self, command: str, names: list[str]) -> dict[str, str]:
        """start/stop/restart/pause/resume of singletons held by other nodes: relayed to each
        holder; the states come back as `NAME@NODE` (docs/cluster.md)."""
        assert self.cluster is not None
        shown: dict[str, str] = {}
        for base in dict.fromkeys(self._services[n].config.name for n in names):
            holders = await self.cluster.holders_of(base)
            if not holders:
                shown[base] = (
                    "STOPPED" if command == "stop" else "no node holds it yet; one takes it within renew_every"
                )
            for node in holders:
                reply = await self.forward(node, command, {"name": base})
                services = reply.get("services", {}) if isinstance(reply, dict) else {}
                shown |= {f"{name}@{node}": str(state) for name, state in services.items()}
        return shown

    @staticmethod
    def _wait_budget_ms(command: str, cfg: ServiceConfig) -> int:
        stop_ms = cfg.stop_timeout_ms + 2000
        start_ms = cfg.start_timeout_ms + 2000
        return {"stop": stop_ms, "restart": stop_ms + start_ms, "start": start_ms}.get(command, 0)

    def _settled(self, command: str, name: str, incarnation_before: int) -> bool:
        r = self._services[name].record
        S = core.ServiceState
        if command == "stop":
            return r.state not in core.ALIVE
        if command in ("start", "restart"):
            if command == "restart" and r.incarnation == incarnation_before and r.state in core.ALIVE:
                return False
            return r.state not in (S.STARTING, S.STOPPING)
        return True
