"""`Supervisor`: the asyncio shell around the pure per-service state machines.

It owns the event loop's share of the work: the control, worker and events
sockets, the child processes, the timers and the orphan guard. It turns I/O into
core events (`state.step`) and carries out the actions the core returns.
Its parts live beside it: `runtime` (a service as the shell holds it), `binding`
(the endpoints), `guard_link` (the orphan guard), `changes` (add, remove,
update, scale, reload), `status` (what `status` shows). Use it as `async with Supervisor(config) as sup: ...`, or run the daemon with
`supervise start CONFIG`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from supervise.protocol.codec import decode_worker_message, encode_worker_message
from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor import state as core
from supervise.supervisor.binding import Endpoints
from supervise.supervisor.changes import RuntimeChanges
from supervise.supervisor.clock import Clock, SystemClock
from supervise.supervisor.commands import COMMANDS
from supervise.supervisor.config import (
    Config,
    ServiceConfig,
    load_config,
    parse_service,
)
from supervise.supervisor.control import ControlServer
from supervise.supervisor.dependencies import stop_layers
from supervise.supervisor.errors import ConfigError, ServiceNotFound
from supervise.supervisor.guard_link import GuardLink
from supervise.supervisor.lock import StateDirLock, prepare_state_dir
from supervise.supervisor.observability import Observability
from supervise.supervisor.output import RotatingLog
from supervise.supervisor.processes import (
    SpawnRequest,
    Worker,
    describe_spawn_error,
    python_worker_argv,
    spawn,
)
from supervise.supervisor.runs import Run, RunState
from supervise.supervisor.runtime import (
    SUPERVISOR_TIMEOUT_MIN_MS,
    ServiceRuntime,
    runs_per_process,
    service_spec,
    supervisor_timeout_ms,
)
from supervise.supervisor.scheduler import Scheduler, run_to_dict
from supervise.supervisor.sockets import Inbox
from supervise.supervisor.status import shown_state, status_row, status_row_detail
from supervise.supervisor.store import open_store
from supervise.supervisor.store.queued import QueuedStore

log = logging.getLogger("supervise")

VERSION = "0.1.0"


_HEARTBEAT = core.HeartbeatReceived()

# A busy worker channel is read every 50 ms: 200 workers heartbeating at 1 Hz wake the
# loop 20 times a second instead of 200 (half the supervisor's idle CPU), for at most
# 50 ms more latency under load; a message on a quiet channel is read at once.
WORKER_READ_GAP_S = 0.05

# Worker exits (and the restarts they cause) handled per turn of the event loop.
EXITS_PER_TURN = 10



class Supervisor(RuntimeChanges):
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
            from supervise.supervisor.config import parse_config

            config = parse_config(config)
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._handle_signals = handle_signals
        self._services: dict[str, ServiceRuntime] = {}
        self._queue: collections.deque[tuple[str, core.Event]] = collections.deque()
        self._feeding = False
        self._exits: collections.deque[tuple[ServiceRuntime, Worker, int | None, int | None]] = collections.deque()
        self._exits_scheduled = False
        self._run_processes: set[Worker] = set()  # command runs of scheduled services
        self._pending_starts: set[str] = set()  # waiting for what they require to be RUNNING
        self.forced_stop = False  # a second SIGTERM/SIGINT killed the workers: the daemon exits 1
        self._changed = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._closed = asyncio.Event()
        self._started_at = 0.0
        self._lock = StateDirLock(config.supervisor.state_dir)
        self._endpoints = Endpoints(config)
        self._workers: Inbox | None = None
        self._control: ControlServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._guard = GuardLink()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bad_worker_messages = 0
        self.observability = Observability(
            self,
            clock=self._clock,
            sample_interval_s=config.supervisor.sample_interval_ms / 1000, on_over_memory=lambda name, rss, limit: self._feed(name, core.OverMemory(rss, limit))
        )
        self._instance = secrets.token_hex(8)
        self._store: QueuedStore | None = None
        self.scheduler: Scheduler | None = None
        for cfg in config.services.values():
            self._register(cfg)

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
        prepare_state_dir(sup.state_dir)
        self._lock.acquire()
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
        self._workers = Inbox(self._loop, endpoints.workers, self._on_worker_message, min_gap_s=WORKER_READ_GAP_S)
        readonly = endpoints.curve.readonly_user_ids() if endpoints.curve is not None else None
        self._control = ControlServer(endpoints.control, self._call, readonly=readonly)
        self._tasks = [
            asyncio.create_task(self._control.serve(), name="supervise-control"),
            asyncio.create_task(self._beat_workers(), name="supervise-heartbeats"),
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
        self._restore_registrations()
        self._start_in_order([n for n, s in self._services.items() if s.config.autostart])

    def _start_scheduler(self) -> None:
        url = self.config.supervisor.store
        shared = url is not None and url.startswith(("postgresql://", "postgres://"))
        store = open_store(url or self.config.supervisor.state_dir / "history.db")
        queued = QueuedStore(store, shared=shared)
        self._store = queued
        self.scheduler = Scheduler(self, queued)
        for name, svc in self._services.items():
            if svc.config.schedule is not None and svc.instance == 0:  # one schedule for all its processes
                self.scheduler.add(name, svc.config.schedule, python=not runs_per_process(svc.config))
        self.scheduler.start()
        self.scheduler.arm_stored_oneshots()

    def _restore_registrations(self) -> None:
        """Services added at runtime by an earlier run of this supervisor come back."""
        assert self._store is not None
        for name, table in self._store.list_registrations().items():
            if name in self._services:
                log.warning("runtime service %s is shadowed by the config's service of that name", name)
                continue
            try:
                cfg = parse_service(name, table, base_dir=self.config.base_dir, source="runtime registration")
            except ConfigError as e:
                log.error("runtime service %s can no longer be loaded; skipped:\n%s", name, e)
                continue
            self._register(replace(cfg, origin="runtime"))

    def _register(self, cfg: ServiceConfig) -> list[str]:
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
        svc = self._services.get(name)
        if svc is not None and (svc.instance != 0 or svc.config.processes == 1):
            return [name]  # an instance, or a service of one process: the common case, in O(1)
        names = [n for n, s in self._services.items() if s.config.name == name]
        if not names:
            raise ServiceNotFound(name, sorted({s.config.name for s in self._services.values()}))
        return names

    def _start_in_order(self, names: list[str]) -> None:
        """Start `names` (services or instances), each once what it requires is RUNNING."""
        for name in names:
            for instance in self.expand(name):
                if not runs_per_process(self._services[instance].config):
                    self._pending_starts.add(instance)
        self._start_ready()

    def _start_ready(self) -> None:
        for name in [n for n in self._services if n in self._pending_starts]:
            svc = self._services[name]
            if all(self._running(d) for d in svc.config.requires):
                self._pending_starts.discard(name)
                self._feed(name, core.StartRequested())

    def _running(self, service: str) -> bool:
        """Every instance of `service` is RUNNING."""
        instances = [s for s in self._services.values() if s.config.name == service]
        return bool(instances) and all(s.record.state is core.ServiceState.RUNNING for s in instances)

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
        for worker in self._run_processes:
            worker.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.config.supervisor.shutdown_timeout_ms / 1000
        await self._stop_in_order(deadline)
        if not await self._wait_until(lambda: not self._alive_workers(), max(0.0, deadline - time.monotonic())):
            for worker in self._run_processes:
                worker.signal_group(signal.SIGKILL)
            for svc in self._services.values():
                if svc.worker is not None:
                    log.warning("%s (pid %d) still running at shutdown_timeout; SIGKILL", svc.name, svc.worker.pid)
                    svc.worker.signal_group(signal.SIGKILL)
            await self._wait_until(lambda: not self._alive_workers(), 5.0)
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
        if self.scheduler is not None:
            self.scheduler.close()
        if self._store is not None:
            self._store.close()
        await self.observability.close()
        self._guard.stop()
        if self._workers is not None:
            self._workers.close()
            self._workers = None
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

    def _alive_workers(self) -> bool:
        return bool(self._run_processes) or any(s.worker is not None for s in self._services.values())

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
            for svc in self._services.values():
                if svc.worker is not None:
                    svc.worker.signal_group(signal.SIGKILL)
            for worker in self._run_processes:
                worker.signal_group(signal.SIGKILL)
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
                for action in actions:
                    self._execute(svc, action, now_ms)
                if svc.record.state is not before:
                    self._notify()
        finally:
            self._feeding = False

    def _execute(self, svc: ServiceRuntime, action: core.Action, now_ms: int) -> None:
        match action:
            case core.Spawn(incarnation):
                self._spawn(svc, incarnation)
            case core.SignalGroup(sig):
                if svc.worker is not None:
                    svc.worker.signal_group(sig)
            case core.SendWorker(kind):
                self._send_worker(svc, kind)
            case core.ArmTimer(timer, at_ms):
                self._arm(svc, timer, at_ms - now_ms)
            case core.CancelTimer(timer):
                handle = svc.timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case core.Emit(kind, detail, message):
                self._emit(svc.name, kind, detail, message)

    def _arm(self, svc: ServiceRuntime, timer: core.Timer, delay_ms: int) -> None:
        assert self._loop is not None
        old = svc.timers.pop(timer, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            svc.timers.pop(timer, None)
            self._feed(svc.name, core.TimerFired(timer))

        svc.timers[timer] = self._loop.call_later(max(0, delay_ms) / 1000, fire)

    def _spawn(self, svc: ServiceRuntime, incarnation: int) -> None:
        assert self._loop is not None
        svc.token = secrets.token_hex(16)
        svc.worker_id = f"{svc.name}/{incarnation}"
        svc.worker_id_bytes = svc.worker_id.encode()
        svc.heartbeat_frame = encode_worker_message("heartbeat", token=svc.token)
        if svc.log is None:
            svc.log = self._open_log(svc.name)
        request = self._spawn_request(svc)
        try:
            worker = spawn(self._loop, request, svc.log, partial(self._on_worker_exit, svc))
        except OSError as e:
            self._queue.append((svc.name, core.SpawnFailed(describe_spawn_error(e, request.argv, request.cwd))))
            return
        svc.worker = worker
        self._guard.watch(worker.pid)
        self._queue.append((svc.name, core.WorkerSpawned(worker.pid)))

    def _open_log(self, name: str) -> RotatingLog:
        sup = self.config.supervisor
        return RotatingLog(sup.state_dir / "logs" / f"{name}.log", max_bytes=sup.log_max_bytes, backups=sup.log_backups)

    def _spawn_request(self, svc: ServiceRuntime) -> SpawnRequest:
        cfg = svc.config
        sup = self.config.supervisor
        env = dict(os.environ)
        env.update(cfg.env)
        env.update(
            SUPERVISE_SERVICE=svc.name,
            SUPERVISE_WORKER_ID=svc.worker_id,
            SUPERVISE_WORKER_ENDPOINT=sup.workers_endpoint,
            SUPERVISE_TOKEN=svc.token,
            SUPERVISE_PPID=str(os.getpid()),
            SUPERVISE_INSTANCE=self._instance,
            SUPERVISE_HEARTBEAT_INTERVAL_MS=str(cfg.heartbeat_interval_ms),
            SUPERVISE_SUPERVISOR_TIMEOUT_MS=str(supervisor_timeout_ms(cfg)),
        )
        if cfg.target is not None:
            env["SUPERVISE_TARGET"] = cfg.target
            if cfg.schedule is not None:
                env["SUPERVISE_MODE"] = "once" if cfg.schedule.isolation == "process" else "runs"
                env["SUPERVISE_CONCURRENCY"] = str(cfg.schedule.concurrency)
            paths = [str(self.config.base_dir), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
            argv: list[str] = python_worker_argv()
        else:
            assert cfg.command is not None
            argv = list(cfg.command)
        return SpawnRequest(argv=argv, env=env, cwd=cfg.cwd, user=cfg.user, umask=cfg.umask)

    def _on_worker_exit(self, svc: ServiceRuntime, worker: Worker, code: int | None, sig: int | None) -> None:
        """A worker was reaped: queue its exit, handled EXITS_PER_TURN per loop turn.

        Workers that started together exit together: 200 of them at once would
        be 200 restarts in one turn of the loop, and a control request arriving
        meanwhile would wait for all of them.
        """
        assert self._loop is not None
        self._guard.forget(worker.pid)
        self._exits.append((svc, worker, code, sig))
        if not self._exits_scheduled:
            self._exits_scheduled = True
            self._loop.call_soon(self._handle_exits)

    def _handle_exits(self) -> None:
        assert self._loop is not None
        for _ in range(min(EXITS_PER_TURN, len(self._exits))):
            self._handle_exit(*self._exits.popleft())
        if self._exits:
            self._loop.call_soon(self._handle_exits)  # the rest after what else is ready
        else:
            self._exits_scheduled = False

    def _handle_exit(self, svc: ServiceRuntime, worker: Worker, code: int | None, sig: int | None) -> None:
        if svc.worker is not worker or self._services.get(svc.name) is not svc:
            return  # the service was removed (or scaled down) meanwhile
        if svc.config.is_python and self._workers is not None:
            # What the worker said before it died (its traceback, its last run's result)
            # may still wait in a busy channel's batch: it comes before the exit.
            self._workers.drain_pending()
        svc.worker = None
        self._feed(svc.name, core.WorkerExited(code, sig))
        if self.scheduler is not None:
            self.scheduler.on_worker_exit(svc.name)

    def _notify(self) -> None:
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

    # -- events ------------------------------------------------------------------

    def _emit(self, service: str, kind: str, detail: Mapping[str, object], message: str) -> None:
        # Numbered, kept for replay, logged, counted and published (PUB drops at its HWM).
        self.observability.emit(service, kind, detail, message)

    # -- the worker channel ------------------------------------------------------

    def _on_worker_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.bad_worker_messages += 1
            return
        identity, body = frames
        name, _, _ = identity.decode(errors="replace").rpartition("/")
        svc = self._services.get(name)
        if svc is not None and body == svc.heartbeat_frame and identity == svc.worker_id_bytes:
            # Hundreds a second: the exact bytes this worker's heartbeat must be, so no decoding.
            self._feed(name, _HEARTBEAT)
            return
        try:
            msg = decode_worker_message(body, sender="worker")
        except ProtocolError:
            self.bad_worker_messages += 1
            return
        # A message counts only from the current incarnation's identity with its token.
        if svc is None or identity.decode(errors="replace") != svc.worker_id or msg.fields.get("token") != svc.token:
            self.bad_worker_messages += 1
            return
        if msg.kind == "hello":
            self._feed(name, core.HelloReceived())
            if self.scheduler is not None:
                self.scheduler.on_worker_ready(name)
        elif msg.kind.startswith("run_"):
            if self.scheduler is not None:
                self.scheduler.on_worker_message(name, msg.kind, msg.fields)
        elif msg.kind == "heartbeat":
            self._feed(name, core.HeartbeatReceived())
        elif msg.kind == "watchdog":
            self._feed(name, core.WatchdogReceived())
        elif msg.kind == "error":
            text = msg.fields.get("traceback") or msg.fields.get("message")
            self._feed(name, core.ErrorReported(str(text)))
        elif msg.kind == "metrics":
            svc.metrics = {"counters": msg.fields.get("counters", {}), "gauges": msg.fields.get("gauges", {})}
            self.observability.worker_metrics(name, svc.record.incarnation, svc.metrics)

    def _send_worker(self, svc: ServiceRuntime, kind: str) -> None:
        if self._workers is None or not svc.worker_id:
            return
        # Not connected (yet, or any more): dropped; the signal path still works.
        self._workers.send([svc.worker_id.encode(), encode_worker_message(kind)])

    async def _beat_workers(self) -> None:
        """Heartbeat every Python worker, five times within the shortest supervisor timeout."""
        timeouts = [supervisor_timeout_ms(s.config) for s in self._services.values()] or [SUPERVISOR_TIMEOUT_MIN_MS]
        period_s = max(1.0, min(timeouts) / 5 / 1000)
        while True:
            await asyncio.sleep(period_s)
            for svc in self._services.values():
                if svc.worker is not None and svc.config.is_python:
                    self._send_worker(svc, "heartbeat")

    # -- what the scheduler calls ------------------------------------------------

    def wall(self) -> datetime:
        return self._clock.wall()

    def publish(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        self._emit(service, kind, detail, "")

    def record_run(self, service: str, run: Run) -> None:
        """A run finished (hook for metrics)."""

    def worker_ready(self, name: str) -> bool:
        svc = self._services[name]
        return svc.worker is not None and svc.record.hello

    def send_run(self, name: str, **fields: object) -> None:
        svc = self._services[name]
        assert self._workers is not None
        self._workers.send([svc.worker_id.encode(), encode_worker_message("run", **fields)])

    def send_cancel(self, name: str, run_id: str) -> None:
        svc = self._services[name]
        assert self._workers is not None
        self._workers.send([svc.worker_id.encode(), encode_worker_message("cancel", run_id=run_id)])

    def restart_worker(self, name: str) -> None:
        self._feed(name, core.RestartRequested())

    def spawn_run_process(self, name: str, env: Mapping[str, str], on_exit: Callable[[Worker, int | None, int | None], None]) -> Worker:
        """Start one execution of a scheduled command; raises OSError if it cannot start."""
        assert self._loop is not None
        svc = self._services[name]
        svc.token = svc.token or secrets.token_hex(16)
        svc.worker_id = svc.worker_id or f"{name}/run"
        request = self._spawn_request(svc)
        request = replace(request, env={**request.env, **env})
        if svc.log is None:
            svc.log = self._open_log(name)

        def exited(worker: Worker, code: int | None, sig: int | None) -> None:
            self._run_processes.discard(worker)
            self._guard.forget(worker.pid)
            if svc.config.is_python and self._workers is not None:
                self._workers.drain_pending()  # the run's result, sent just before it exited
            on_exit(worker, code, sig)
            self._notify()

        worker = spawn(self._loop, request, svc.log, exited)
        self._run_processes.add(worker)
        self._guard.watch(worker.pid)
        return worker

    # -- what the commands call -------------------------------------------------

    async def _call(self, command: str, args: dict[str, object]) -> object:
        return await COMMANDS[command].handler(self, args)

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
        if self._store is None:
            return []
        return [run_to_dict(r) for r in self._store.list_runs(name, states=states, limit=limit)]

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

    def service_names(self) -> list[str]:
        return list(self._services)

    def require(self, name: str) -> ServiceRuntime:
        """The runtime of `name` (a service, or one instance of it); ServiceNotFound otherwise."""
        return self._services[self.expand(name)[0]]

    def status(self, name: str | None = None, *, detail: bool = False) -> dict[str, object]:
        """Every service's (or one's) live state; with `detail`, its configuration facts and counters too."""
        names = self.expand(name) if name is not None else list(self._services)
        now_ms = self._clock.monotonic_ms()
        row = status_row_detail if detail else status_row
        resources, scheduler = self.observability.resources, self.scheduler
        return {
            "supervisor": {**self.ping(), "healthy": self.healthy()},
            "services": [row(self._services[n], now_ms, resources, scheduler) for n in names],
        }

    def healthy(self) -> bool:
        """False when any critical service is FATAL."""
        return not any(
            s.config.critical and s.record.state is core.ServiceState.FATAL for s in self._services.values()
        )

    def _shown_state(self, svc: ServiceRuntime) -> str:
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
            timeout_s = max(
                (self._wait_budget_ms(command, self._services[n].config) for n in names), default=0
            ) / 1000
            await self._wait_until(lambda: all(self._settled(command, n, before[n]) for n in names), timeout_s)
        return {"services": {n: self._shown_state(self._services[n]) for n in names}}

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
