"""`WorkerPool`: the daemon's worker processes and the channel to them.

It spawns workers (building each one's environment, the contract of
`supervise.protocol.worker_env`), reads the worker channel (hello, heartbeats,
run messages, metrics, errors), heartbeats Python workers, reaps exits in
batches, and runs the one-process-per-run executions of scheduled services.
It decides nothing: what a message or an exit means is passed on through the
callables it is given (the state machine's `feed`, the scheduler's hooks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import zmq

from supervise.protocol import worker_env as E
from supervise.protocol.codec import decode_worker_message, encode_worker_message
from supervise.protocol.errors import ProtocolError
from supervise.supervisor.cgroups import prepare_service_cgroup
from supervise.supervisor.config.model import SupervisorConfig
from supervise.supervisor.core import state as core
from supervise.supervisor.daemon.environment import EnvironCopy, worker_environment
from supervise.supervisor.daemon.guard_link import GuardLink
from supervise.supervisor.daemon.launch import identity_for, launch_for
from supervise.supervisor.daemon.listeners import ListenSockets
from supervise.supervisor.daemon.output import RotatingLog
from supervise.supervisor.daemon.ports import ExitCallback
from supervise.supervisor.daemon.processes import (
    SpawnRequest,
    Worker,
    describe_spawn_error,
    python_worker_argv,
    spawn,
)
from supervise.supervisor.daemon.registry import ServiceTable
from supervise.supervisor.daemon.runtime import SUPERVISOR_TIMEOUT_MIN_MS, ServiceRuntime, supervisor_timeout_ms
from supervise.supervisor.daemon.sockets import Inbox

_HEARTBEAT = core.HeartbeatReceived()

# A busy worker channel is read every 50 ms: 200 workers heartbeating at 1 Hz wake the
# loop 20 times a second instead of 200 (half the supervisor's idle CPU), for at most
# 50 ms more latency under load; a message on a quiet channel is read at once.
WORKER_READ_GAP_S = 0.05

# Worker exits (and the restarts they cause) handled per turn of the event loop.
EXITS_PER_TURN = 10


@dataclass(frozen=True, slots=True)
class PoolHooks:
    """Where the pool passes on what it hears; each takes the instance name first."""

    feed: Callable[[str, core.Event], None]  # an event for the service's state machine
    worker_exited: Callable[[str, int | None, int | None], None]  # (name, code, signal) of its current worker
    hello: Callable[[str], None]  # the worker is ready for runs
    run_message: Callable[[str, str, Mapping[str, Any]], None]  # run_started / run_finished / ...
    metrics: Callable[[str, int, Mapping[str, Any]], None]  # (name, incarnation, {counters, gauges})
    changed: Callable[[], None]  # a run process ended: wake whoever waits on a change
    command_env: Callable[[ServiceRuntime], Mapping[str, str]]  # more environment for a command's worker
    # Held around each read of the channel: the run history's writer waits meanwhile, so the
    # state changes of one read go to the store together (`QueuedStore.held`).
    reading: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext


def worker_spawn_request(
    svc: ServiceRuntime,
    sup: SupervisorConfig,
    *,
    base_dir: Path,
    instance: str,
    environ: Mapping[str, str] | None = None,
) -> SpawnRequest:
    """How to start `svc`'s next worker: argv, the environment contract, cwd, user and umask.

    `environ`: the supervisor's environment (`os.environ` if not given)."""
    cfg = svc.config
    env = worker_environment(cfg, sup, os.environ if environ is None else environ)
    env.update(
        {
            E.SERVICE: svc.name,
            E.WORKER_ID: svc.worker_id,
            E.WORKER_ENDPOINT: sup.workers_endpoint,
            E.TOKEN: svc.token,
            E.PPID: str(os.getpid()),
            E.INSTANCE: instance,
            E.HEARTBEAT_INTERVAL_MS: str(cfg.heartbeat_interval_ms),
            E.SUPERVISOR_TIMEOUT_MS: str(supervisor_timeout_ms(cfg)),
        }
    )
    if cfg.target is not None:
        env[E.TARGET] = cfg.target
        if cfg.schedule is not None:
            env[E.MODE] = E.MODE_ONCE if cfg.schedule.isolation == "process" else E.MODE_RUNS
            env[E.CONCURRENCY] = str(cfg.schedule.concurrency)
        paths = [str(base_dir), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        argv: list[str] = python_worker_argv()
    else:
        assert cfg.command is not None
        argv = list(cfg.command)
    return SpawnRequest(argv=argv, env=env, cwd=cfg.cwd, user=cfg.user, umask=cfg.umask)


class WorkerPool:
    """Spawns, hears, heartbeats and reaps the workers of the services in `services`.

    Args:
        services: the daemon's service table (shared, read here).
        sup: the `[supervisor]` settings (workers endpoint, log sizes, state dir).
        base_dir: the config's folder, put on a Python worker's `sys.path`.
        guard: the orphan guard, told of every worker pid.
        hooks: where messages and exits go.
    """

    def __init__(
        self, services: ServiceTable, sup: SupervisorConfig, *, base_dir: Path, guard: GuardLink, hooks: PoolHooks
    ) -> None:
        self._services = services
        self._sup = sup
        self._base_dir = base_dir
        self._guard = guard
        self._hooks = hooks
        self._instance = os.urandom(8).hex()  # this supervisor incarnation, told to its workers
        self._environ = EnvironCopy()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: Inbox | None = None
        self._exits: collections.deque[tuple[ServiceRuntime, Worker, int | None, int | None]] = collections.deque()
        self._exits_scheduled = False
        self.run_processes: set[Worker] = set()  # one-process runs of scheduled services
        self.bad_messages = 0
        self.listeners = ListenSockets()  # `sockets`, bound once, inherited by every worker of a service

    def open(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[bytes]) -> None:
        """Start reading the bound workers socket `sock` on `loop`."""
        self._loop = loop
        self._channel = Inbox(loop, sock, self._on_message, min_gap_s=WORKER_READ_GAP_S, around=self._hooks.reading)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.listeners.close_all()

    def alive(self) -> bool:
        """A worker or a run process is still running."""
        return bool(self.run_processes) or self._services.alive_workers()

    def signal_all(self, sig: int) -> None:
        """Signal every worker's and run process's group (the forced stop)."""
        for worker in self.run_processes:
            worker.signal_group(sig)
        for svc in self._services.values():
            if svc.worker is not None:
                svc.worker.signal_group(sig)

    # -- spawning --------------------------------------------------------------

    def spawn(self, svc: ServiceRuntime, incarnation: int) -> core.Event:
        """Start `svc`'s worker; the event to feed its state machine (spawned, or the spawn failed)."""
        assert self._loop is not None
        svc.token = os.urandom(16).hex()
        svc.worker_id = f"{svc.name}/{incarnation}"
        svc.worker_id_bytes = svc.worker_id.encode()
        svc.heartbeat_frame = encode_worker_message("heartbeat", token=svc.token)
        if svc.log is None:
            svc.log = self._open_log(svc.name)
        try:
            request = self._request(svc)
            worker = spawn(self._loop, request, svc.log, partial(self._on_exit, svc))
        except OSError as e:
            return core.SpawnFailed(describe_spawn_error(e, svc.config.command or python_worker_argv(), svc.config.cwd))
        svc.worker = worker
        self._guard.watch(worker.pid, svc.name)
        return core.WorkerSpawned(worker.pid)

    def spawn_run_process(
        self, name: str, env: Mapping[str, str], on_exit: ExitCallback, *, fence_until: float | None = None
    ) -> Worker:
        """Start one execution of a scheduled service; raises OSError if it cannot start. With
        `fence_until`, the orphan guard kills its process group at that time (a leased run)."""
        assert self._loop is not None
        svc = self._services[name]
        svc.token = svc.token or os.urandom(16).hex()
        svc.worker_id = svc.worker_id or f"{name}/run"
        request = self._request(svc)
        request = replace(request, env={**request.env, **env})
        if svc.log is None:
            svc.log = self._open_log(name)

        def exited(worker: Worker, code: int | None, sig: int | None) -> None:
            self.run_processes.discard(worker)
            self._guard.forget(worker.pid)
            if svc.config.is_python and self._channel is not None:
                self._channel.drain_pending()  # the run's result, sent just before it exited
            on_exit(worker, code, sig)
            self._hooks.changed()

        worker = spawn(self._loop, request, svc.log, exited)
        self.run_processes.add(worker)
        self._guard.watch(worker.pid)
        if fence_until is not None:
            self._guard.fence_group(worker.pid, fence_until)
        return worker

    def _request(self, svc: ServiceRuntime) -> SpawnRequest:
        request = worker_spawn_request(
            svc, self._sup, base_dir=self._base_dir, instance=self._instance, environ=self._environ.current()
        )
        cfg = svc.config
        cgroup = None
        if cfg.cpu_quota_percent is not None or cfg.memory_max_bytes is not None:
            cgroup = prepare_service_cgroup(
                cfg.name, cpu_quota_percent=cfg.cpu_quota_percent, memory_max_bytes=cfg.memory_max_bytes
            )
        launch = launch_for(cfg, cgroup_procs=cgroup, sockets=self.listeners.for_service(cfg.name, cfg.sockets))
        request = replace(request, identity=identity_for(cfg), launch=launch)
        if svc.config.is_python:
            return request
        return replace(request, env={**request.env, **self._hooks.command_env(svc)})

    def open_log(self, svc: ServiceRuntime) -> RotatingLog:
        """`svc`'s log file (hooks write there too), opened if it is not yet."""
        if svc.log is None:
            svc.log = self._open_log(svc.name)
        return svc.log

    def _open_log(self, name: str) -> RotatingLog:
        sup = self._sup
        return RotatingLog(sup.state_dir / "logs" / f"{name}.log", max_bytes=sup.log_max_bytes, backups=sup.log_backups)

    # -- reaping -----------------------------------------------------------------

    def _on_exit(self, svc: ServiceRuntime, worker: Worker, code: int | None, sig: int | None) -> None:
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
        if svc.config.is_python and self._channel is not None:
            # What the worker said before it died (its traceback, its last run's result)
            # may still wait in a busy channel's batch: it comes before the exit.
            self._channel.drain_pending()
        svc.worker = None
        self._hooks.worker_exited(svc.name, code, sig)

    # -- the channel -----------------------------------------------------------

    def send(self, svc: ServiceRuntime, kind: str, **fields: object) -> None:
        """A message to `svc`'s worker; dropped if it is not connected (the signal path still works)."""
        if self._channel is None or not svc.worker_id:
            return
        self._channel.send([svc.worker_id.encode(), encode_worker_message(kind, **fields)])

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.bad_messages += 1
            return
        identity, body = frames
        name, _, _ = identity.decode(errors="replace").rpartition("/")
        svc = self._services.get(name)
        if svc is not None and body == svc.heartbeat_frame and identity == svc.worker_id_bytes:
            # Hundreds a second: the exact bytes this worker's heartbeat must be, so no decoding.
            self._hooks.feed(name, _HEARTBEAT)
            return
        try:
            msg = decode_worker_message(body, sender="worker")
        except ProtocolError:
            self.bad_messages += 1
            return
        # A message counts only from the current incarnation's identity with its token.
        if svc is None or identity.decode(errors="replace") != svc.worker_id or msg.fields.get("token") != svc.token:
            self.bad_messages += 1
            return
        self._dispatch(svc, msg.kind, msg.fields)

    def _dispatch(self, svc: ServiceRuntime, kind: str, fields: Mapping[str, Any]) -> None:
        name = svc.name
        if kind == "hello":
            self._hooks.feed(name, core.HelloReceived())
            self._hooks.hello(name)
        elif kind.startswith("run_"):
            self._hooks.run_message(name, kind, fields)
        elif kind == "heartbeat":
            self._hooks.feed(name, _HEARTBEAT)
        elif kind == "watchdog":
            self._hooks.feed(name, core.WatchdogReceived())
        elif kind == "error":
            text = fields.get("traceback") or fields.get("message")
            self._hooks.feed(name, core.ErrorReported(str(text)))
        elif kind == "metrics":
            svc.metrics = {"counters": fields.get("counters", {}), "gauges": fields.get("gauges", {})}
            self._hooks.metrics(name, svc.record.incarnation, svc.metrics)

    async def beat_forever(self) -> None:
        """Heartbeat every Python worker, five times within the shortest supervisor timeout."""
        timeouts = [supervisor_timeout_ms(s.config) for s in self._services.values()] or [SUPERVISOR_TIMEOUT_MIN_MS]
        period_s = max(1.0, min(timeouts) / 5 / 1000)
        while True:
            await asyncio.sleep(period_s)
            for svc in self._services.values():
                if svc.worker is not None and svc.config.is_python:
                    self.send(svc, "heartbeat")
