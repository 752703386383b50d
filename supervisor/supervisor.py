"""`Supervisor`: the asyncio shell around the pure per-service state machines.

It owns the event loop's share of the work: the control, worker and events
sockets, the child processes, the timers and the orphan guard. It turns I/O into
core events (`state.step`) and carries out the actions the core returns.
Use it as `async with Supervisor(config) as sup: ...`, or run the daemon with
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
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import zmq
import zmq.asyncio

from supervise.protocol.codec import decode_worker_message, encode_worker_message
from supervise.protocol.endpoints import ipc_path
from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor import state as core
from supervise.supervisor.clock import Clock, SystemClock
from supervise.supervisor.commands import COMMANDS
from supervise.supervisor.config import Config, ServiceConfig, diff_configs, load_config, parse_service
from supervise.supervisor.dependencies import stop_layers
from supervise.supervisor.control import ControlServer
from supervise.supervisor.curve import CurveServer, KeyFileError, describe, load_curve_server, tcp_endpoints
from supervise.supervisor.errors import ConfigError, ConfigProblem, ServiceNotFound
from supervise.supervisor.lock import StateDirLock, prepare_state_dir
from supervise.supervisor.observability import Observability
from supervise.supervisor.output import RotatingLog
from supervise.supervisor.processes import SpawnRequest, Worker, describe_spawn_error, python_worker_argv, spawn
from supervise.supervisor.restart import RestartPolicy
from supervise.supervisor.runs import Run, RunState
from supervise.supervisor.scheduler import Scheduler, run_to_dict
from supervise.supervisor.store import open_store
from supervise.supervisor.store.queued import QueuedStore
from supervise.supervisor.store.base import Store
from supervise.supervisor.sockets import Inbox

if TYPE_CHECKING:
    from zmq.auth.asyncio import AsyncioAuthenticator

log = logging.getLogger("supervise")

VERSION = "0.1.0"


SUPERVISOR_TIMEOUT_MIN_MS = 15_000
_HEARTBEAT = core.HeartbeatReceived()


def supervisor_timeout_ms(cfg: ServiceConfig) -> int:
    """How long a Python worker waits without word from the supervisor before it exits.

    The backstop to PR_SET_PDEATHSIG, so generous: a supervisor busy starting 200
    interpreters on two cores must not look dead to its own workers.
    """
    return max(3 * cfg.heartbeat_timeout_ms, SUPERVISOR_TIMEOUT_MIN_MS)


# A busy worker channel is read every 50 ms: 200 workers heartbeating at 1 Hz wake the
# loop 20 times a second instead of 200 (half the supervisor's idle CPU), for at most
# 50 ms more latency under load; a message on a quiet channel is read at once.
WORKER_READ_GAP_S = 0.05

# Worker exits (and the restarts they cause) handled per turn of the event loop.
EXITS_PER_TURN = 10


def instance_name(service: str, instance: int) -> str:
    """`web` for instance 0, `web:1`, `web:2` ... for the others (see `processes`)."""
    return service if instance == 0 else f"{service}:{instance}"


PROCESS_FIELDS = frozenset({"command", "target", "env", "cwd", "user", "umask", "schedule", "heartbeat_interval_ms"})
"""Settings baked into a worker at spawn: changing one restarts the service."""
POLICY_FIELDS = frozenset(
    {
        "critical", "autostart", "watchdog_timeout_ms", "restart", "max_restarts", "restart_window_ms", "backoff_ms", "backoff_max_ms",
        "stable_after_ms", "start_timeout_ms", "heartbeat_timeout_ms", "stop_signal", "stop_timeout_ms",
        "max_memory_bytes", "requires",
    }
)
"""Settings the supervisor reads when it decides: changing one takes effect without a restart."""
_GUARD_GRACE_S = 1.0


def service_spec(cfg: ServiceConfig) -> core.ServiceSpec:
    """The part of a service's config the state machine decides with."""
    return core.ServiceSpec(
        restart=str(cfg.restart),
        policy=RestartPolicy(
            max_restarts=cfg.max_restarts,
            window_ms=cfg.restart_window_ms,
            backoff_ms=cfg.backoff_ms,
            backoff_max_ms=cfg.backoff_max_ms,
            stable_after_ms=cfg.stable_after_ms,
        ),
        python=cfg.is_python,
        start_timeout_ms=cfg.start_timeout_ms,
        heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
        stop_signal=int(cfg.stop_signal),
        stop_timeout_ms=cfg.stop_timeout_ms,
        watchdog_timeout_ms=cfg.watchdog_timeout_ms,
    )


@dataclass
class ServiceRuntime:
    """The shell's side of one service: its config, core record, worker and timers."""

    config: ServiceConfig
    spec: core.ServiceSpec
    record: core.Service = field(default_factory=core.Service)
    worker: Worker | None = None
    token: str = ""
    worker_id: str = ""
    log: RotatingLog | None = None
    timers: dict[core.Timer, asyncio.TimerHandle] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    instance: int = 0  # which of the service's `processes` this is; instance 0 carries the plain name
    worker_id_bytes: bytes = b""  # the current worker's routing identity
    heartbeat_frame: bytes = b""  # the exact bytes of the current worker's heartbeat
    name: str = field(init=False)  # `instance_name(config.name, instance)`: a config update keeps the name

    def __post_init__(self) -> None:
        self.name = instance_name(self.config.name, self.instance)


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
        self._zctx: zmq.asyncio.Context | None = None
        self._control_sock: zmq.asyncio.Socket | None = None
        self._workers_sock: zmq.Socket[bytes] | None = None
        self._workers: Inbox | None = None
        self._events_sock: zmq.asyncio.Socket | None = None
        self._control: ControlServer | None = None
        self._curve: CurveServer | None = None
        self._auth: AsyncioAuthenticator | None = None  # ZAP for tcp:// endpoints with CURVE
        self._tasks: list[asyncio.Task[None]] = []
        self._guard: subprocess.Popen[bytes] | None = None
        self._guard_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bad_worker_messages = 0
        self.observability = Observability(
            self,
            clock=self._clock,
            sample_interval_s=config.supervisor.sample_interval_ms / 1000, on_over_memory=lambda name, rss, limit: self._feed(name, core.OverMemory(rss, limit))
        )
        self._instance = secrets.token_hex(8)
        self._store: Store | None = None
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
            self._bind()
            await self.observability.start(self._events_sock)
            self._start_guard()
        except BaseException:
            await self.observability.close()
            self._unbind()
            self._lock.release()
            raise
        assert self._control_sock is not None and self._workers_sock is not None
        self._workers = Inbox(self._loop, self._workers_sock, self._on_worker_message, min_gap_s=WORKER_READ_GAP_S)
        readonly = self._curve.readonly_user_ids() if self._curve is not None else None
        self._control = ControlServer(self._control_sock, self._call, readonly=readonly)
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
        self._store = QueuedStore(store, shared=shared)  # type: ignore[assignment]
        self.scheduler = Scheduler(self, self._store)
        for name, svc in self._services.items():
            if svc.config.schedule is not None:
                self.scheduler.add(name, svc.config.schedule, python=not self._runs_per_process(svc.config))
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
            self.scheduler.add(cfg.name, cfg.schedule, python=not self._runs_per_process(cfg))
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
                if not self._runs_per_process(self._services[instance].config):
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

    @staticmethod
    def _runs_per_process(cfg: ServiceConfig) -> bool:
        """A scheduled command (or isolation = "process") has no warm worker: each run is one process."""
        return cfg.schedule is not None and (not cfg.is_python or cfg.schedule.isolation == "process")

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
        self._stop_guard()
        self._unbind()
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
            await self._wait_until(
                lambda: all(self._services[n].worker is None for n in instances), max(0.0, deadline - time.monotonic())
            )

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

    # -- sockets ---------------------------------------------------------------

    def _bind(self) -> None:
        sup = self.config.supervisor
        self._zctx = zmq.asyncio.Context()
        if tcp_endpoints(sup):
            self._secure_tcp()
        self._control_sock = self._bound(zmq.ROUTER, sup.control_endpoint)
        self._control_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A plain socket: read by `Inbox` without a future per heartbeat.
        self._workers_sock = self._bound(zmq.ROUTER, sup.workers_endpoint, zmq.Context.shadow(self._zctx.underlying))
        # Set before bind: libzmq copies socket options into each subscriber's pipe at bind time.
        self._events_sock = self._bound(zmq.PUB, sup.events_endpoint, options={zmq.SNDHWM: 10_000})

    def _bound(
        self, kind: int, endpoint: str, context: zmq.Context[Any] | None = None, options: Mapping[int, int] = {}
    ) -> Any:
        assert self._zctx is not None
        sock = (context or self._zctx).socket(kind)
        for option, value in options.items():
            sock.setsockopt(option, value)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        if endpoint.startswith("tcp://"):
            # ZMTP heartbeats find dead TCP peers (never proof that a client is alive).
            sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
            sock.setsockopt(zmq.HEARTBEAT_TTL, 6000)
            if self._curve is not None:
                self._curve.configure(sock)
        sock.bind(endpoint)
        path = ipc_path(endpoint)
        if path is not None:
            os.chmod(path, 0o600)
        return sock

    def _secure_tcp(self) -> None:
        """CURVE with a ZAP allow-list on tcp:// endpoints, started before any bind; or insecure, loudly."""
        sup = self.config.supervisor
        try:
            self._curve = load_curve_server(sup)
        except KeyFileError as e:  # validated at load; the files changed since
            raise ConfigError(self.config.source, [ConfigProblem("supervisor.curve_server_key", str(e))]) from None
        if self._curve is None:
            if not sup.insecure:  # parse_config refuses this; a SupervisorConfig built by hand may not
                problem = "tcp:// requires CURVE: set curve_server_key and curve_clients, or insecure = true"
                raise ConfigError(self.config.source, [ConfigProblem("supervisor.control", problem)])
            log.critical(
                "INSECURE: %s accept(s) any client without authentication or encryption (insecure = true); "
                "anyone who can reach the port can run any command as uid %d. Set curve_server_key and "
                "curve_clients (docs/security.md)",
                ", ".join(tcp_endpoints(sup)),
                os.geteuid(),
            )
            return
        if not zmq.has("curve"):
            problem = f"this libzmq {zmq.zmq_version()} was built without CURVE; install pyzmq's wheels (they include it)"
            raise ConfigError(self.config.source, [ConfigProblem("supervisor.curve_server_key", problem)])
        assert self._zctx is not None
        self._auth = self._curve.start_authenticator(self._zctx)
        log.info("%s", describe(self._curve, sup))

    def _unbind(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        for sock in (self._control_sock, self._workers_sock, self._events_sock):
            if sock is not None:
                sock.close(linger=0)
        if self._zctx is not None:
            self._zctx.term()
            self._zctx = None
        sup = self.config.supervisor
        for endpoint in (sup.control_endpoint, sup.workers_endpoint, sup.events_endpoint):
            path = ipc_path(endpoint)
            if path is not None:
                path.unlink(missing_ok=True)  # ours: we hold (held) the state dir's lock

    # -- the orphan guard ------------------------------------------------------

    def _start_guard(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self._guard = subprocess.Popen(
                [sys.executable, "-m", "supervise.supervisor.guard", str(_GUARD_GRACE_S)],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(read_fd)
        self._guard_fd = write_fd

    def _tell_guard(self, line: str) -> None:
        if self._guard_fd is not None:
            try:
                os.write(self._guard_fd, f"{line}\n".encode())
            except OSError as e:
                log.error("the orphan guard is gone (%s); workers would survive a crash of supervise", e)
                os.close(self._guard_fd)
                self._guard_fd = None

    def _stop_guard(self) -> None:
        self._tell_guard("bye")
        if self._guard_fd is not None:
            os.close(self._guard_fd)
            self._guard_fd = None
        if self._guard is not None:
            try:
                self._guard.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._guard.kill()
                self._guard.wait()
            self._guard = None

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
        self._tell_guard(f"+{worker.pid}")
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
        self._tell_guard(f"-{worker.pid}")
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
            self._tell_guard(f"-{worker.pid}")
            if svc.config.is_python and self._workers is not None:
                self._workers.drain_pending()  # the run's result, sent just before it exited
            on_exit(worker, code, sig)
            self._notify()

        worker = spawn(self._loop, request, svc.log, exited)
        self._run_processes.add(worker)
        self._tell_guard(f"+{worker.pid}")
        return worker

    # -- what the commands call -------------------------------------------------

    async def _call(self, command: str, args: dict[str, object]) -> object:
        return await COMMANDS[command].handler(self, args)

    # -- runtime changes ---------------------------------------------------------

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
            self.scheduler.remove(name)
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
                self.scheduler.add(name, cfg.schedule, python=not self._runs_per_process(cfg))
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
        plan = {
            "added": list(diff.added),
            "removed": [n for n in diff.removed if self._origin(n) == "config"],
            "changed": {n: list(keys) for n, keys in diff.changed.items()},
            "unchanged": list(diff.unchanged),
            "supervisor_keys_needing_restart": list(diff.supervisor),
        }
        if dry_run:
            return plan
        for name in plan["removed"]:  # type: ignore[union-attr]
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

    def status(self, name: str | None = None, *, detail: bool = False) -> dict[str, object]:
        """Every service's (or one's) live state; with `detail`, its configuration facts and counters too."""
        names = self.expand(name) if name is not None else list(self._services)
        now_ms = self._clock.monotonic_ms()
        describe = self._describe_detail if detail else self._describe
        return {
            "supervisor": {**self.ping(), "healthy": self.healthy()},
            "services": [describe(self._services[n], now_ms) for n in names],
        }

    def healthy(self) -> bool:
        """False when any critical service is FATAL."""
        return not any(
            s.config.critical and s.record.state is core.ServiceState.FATAL for s in self._services.values()
        )

    def _describe(self, svc: ServiceRuntime, now_ms: int) -> dict[str, object]:
        """A service's live state: what `status` shows for each service."""
        r = svc.record
        alive = r.pid is not None
        schedule = self.scheduler.describe(svc.name) if self.scheduler is not None else None
        last_exit = r.last_exit
        cpu_percent, rss_bytes = self.observability.resources(svc)
        return {
            "name": svc.name,
            "state": self._shown_state(svc, schedule) if svc.config.schedule is not None else str(r.state),
            "pid": r.pid,
            "uptime": (now_ms - r.running_since_ms) / 1000 if alive and r.running_since_ms is not None else None,
            "restarts": r.restarts,
            "heartbeat_age": (now_ms - r.last_heartbeat_ms) / 1000 if alive and r.last_heartbeat_ms is not None else None,
            "last_exit": None
            if last_exit is None
            else {
                "cause": str(last_exit.cause),
                "code": last_exit.code,
                "signal": last_exit.signal,
                "ago": (now_ms - last_exit.at_ms) / 1000,
                "text": last_exit.describe(),
            },
            "last_error": r.last_error,
            "cpu_percent": cpu_percent,
            "rss_bytes": rss_bytes,
            "schedule": schedule,
        }

    def _describe_detail(self, svc: ServiceRuntime, now_ms: int) -> dict[str, object]:
        """`_describe` plus the service's configuration facts and rarely needed counters (`status detail`)."""
        r = svc.record
        return {
            **self._describe(svc, now_ms),
            "service": svc.config.name,
            "instance": svc.instance,
            "kind": "python" if svc.config.is_python else "command",
            "critical": svc.config.critical,
            "origin": svc.config.origin,
            "incarnation": r.incarnation,
            "backoff_remaining": (r.backoff_until_ms - now_ms) / 1000 if r.backoff_until_ms is not None else None,
            "max_memory_bytes": svc.config.max_memory_bytes,
            "log_dropped_bytes": svc.log.dropped_bytes if svc.log is not None else 0,
            "log_write_errors": svc.log.write_errors if svc.log is not None else 0,
            "metrics": svc.metrics,
        }

    def _shown_state(self, svc: ServiceRuntime, schedule: Mapping[str, object] | None = None) -> str:
        """The core's state; a scheduled command shows SCHEDULED, RUNNING or PAUSED instead.

        `schedule`: the scheduler's description of the service, when the caller has it already.
        """
        if self._runs_per_process(svc.config) and self.scheduler is not None:
            info = schedule if schedule is not None else self.scheduler.describe(svc.name) or {}
            if info.get("running"):
                return "RUNNING"
            return "PAUSED" if info.get("paused") else "SCHEDULED"
        return str(svc.record.state)

    async def act(self, command: str, names: list[str], *, wait: bool = True) -> dict[str, object]:
        """Apply start/stop/restart/pause/resume to services; with `wait`, until it is done."""
        event: core.Event = {
            "start": core.StartRequested(),
            "stop": core.StopRequested(),
            "restart": core.RestartRequested(),
            "pause": core.PauseRequested(),
            "resume": core.ResumeRequested(),
        }[command]
        before = {n: self._services[n].record.incarnation for n in names}
        for name in names:
            if command in ("pause", "resume") and self.scheduler is not None and self.scheduler.has(name):
                # A scheduled service stops firing; a run in progress goes on.
                (self.scheduler.pause if command == "pause" else self.scheduler.resume)(name)
                continue
            if self._runs_per_process(self._services[name].config):
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
