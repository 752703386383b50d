"""The per-service state machine: an event in, a new state and actions out.

Pure: no I/O, no clock. The asyncio shell (supervisor.py) feeds it events such as
`WorkerExited` with the current monotonic time, and carries out the actions it
returns (`Spawn`, `SignalGroup`, `ArmTimer`, ...).
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from supervise.supervisor.core.errors import InvalidTransition
from supervise.supervisor.core.restart import (
    ExitRules,
    GiveUp,
    Outcome,
    RestartPolicy,
    next_restart,
    wants_restart,
)
from supervise.supervisor.core.units import format_duration_ms


class ServiceState(StrEnum):
    """Where a service is in its life; one value at a time."""

    STOPPED = "STOPPED"  # not running, and not wanted: the initial state, and after a stop
    STARTING = "STARTING"  # a worker was spawned and has not proved itself yet
    RUNNING = "RUNNING"  # the worker said hello (Python) or stayed up for start_timeout (command)
    PAUSED = "PAUSED"  # running, told to pause (Python: cooperative; command: SIGSTOP)
    BACKOFF = "BACKOFF"  # the worker failed; waiting out the backoff before the next spawn
    STOPPING = "STOPPING"  # asked to exit; SIGKILL follows after stop_timeout
    EXITED = "EXITED"  # the worker ended and the restart policy says it stays down
    FATAL = "FATAL"  # too many failures within the window: no more restarts until started by hand


ALLOWED: Mapping[ServiceState, frozenset[ServiceState]] = {
    ServiceState.STOPPED: frozenset({ServiceState.STARTING}),
    ServiceState.STARTING: frozenset(
        {
            ServiceState.RUNNING,
            ServiceState.STOPPING,
            ServiceState.BACKOFF,
            ServiceState.STARTING,
            ServiceState.EXITED,
            ServiceState.FATAL,
        }
    ),
    ServiceState.RUNNING: frozenset(
        {
            ServiceState.PAUSED,
            ServiceState.STOPPING,
            ServiceState.BACKOFF,
            ServiceState.STARTING,
            ServiceState.EXITED,
            ServiceState.FATAL,
        }
    ),
    ServiceState.PAUSED: frozenset(
        {
            ServiceState.RUNNING,
            ServiceState.STOPPING,
            ServiceState.BACKOFF,
            ServiceState.STARTING,
            ServiceState.EXITED,
            ServiceState.FATAL,
        }
    ),
    ServiceState.BACKOFF: frozenset({ServiceState.STARTING, ServiceState.STOPPED, ServiceState.FATAL}),
    ServiceState.STOPPING: frozenset(
        {
            ServiceState.STOPPED,
            ServiceState.STARTING,
            ServiceState.BACKOFF,
            ServiceState.EXITED,
            ServiceState.FATAL,
        }
    ),
    ServiceState.EXITED: frozenset({ServiceState.STARTING}),
    ServiceState.FATAL: frozenset({ServiceState.STARTING}),
}

ALIVE = frozenset({ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED, ServiceState.STOPPING})
"""States in which a worker process exists (or is being spawned)."""


class ExitCause(StrEnum):
    """Why a worker ended, as recorded in `last_exit` and counted in metrics."""

    EXIT = "exit"  # it exited by itself with a code
    SIGNAL = "signal"  # something outside supervise killed it
    STOPPED = "stopped"  # supervise stopped it on request
    HUNG = "hung"  # no heartbeat within heartbeat_timeout; supervise killed it
    START_TIMEOUT = "start_timeout"  # no hello within start_timeout; supervise killed it
    MEMORY = "memory"  # over max_memory; supervise killed it
    SPAWN_FAILED = "spawn_failed"  # the OS could not start it (errno in last_error)


class Timer(StrEnum):
    """The timers a service may have armed; at most one of each."""

    START = "start"  # start_timeout after spawn
    HEARTBEAT = "heartbeat"  # check for a missed heartbeat
    WATCHDOG = "watchdog"  # check the service's own ctx.heartbeat() calls
    KILL = "kill"  # stop_timeout after the stop signal: SIGKILL
    BACKOFF = "backoff"  # end of the backoff delay: spawn again


class After(StrEnum):
    """What to do once a worker that is being stopped has exited."""

    STAY_STOPPED = "stay_stopped"
    RESTART = "restart"  # a user's restart: spawn at once, no policy
    APPLY_POLICY = "apply_policy"  # supervise killed it (hung, start timeout, memory): a failure


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What the state machine needs to know of a service's config."""

    restart: str  # a key of restart.RESTART_ON: "always", "on-failure", "on-abnormal", "never", ...
    policy: RestartPolicy
    python: bool  # a Python target: must say hello; obeys pause/resume/stop messages
    start_timeout_ms: int
    heartbeat_timeout_ms: int
    stop_signal: int
    stop_timeout_ms: int
    watchdog_timeout_ms: int | None = None  # the service's own code must call ctx.heartbeat() this often
    hang_signal: int = signal.SIGKILL  # sent to a hung worker's group; anything but SIGKILL gets hang_grace_ms
    hang_grace_ms: int = 1_000  # then SIGKILL (capped by stop_timeout_ms)
    exit_rules: ExitRules = field(default_factory=ExitRules)  # success / restart_prevent / restart_force exit codes
    notify: bool = False  # type = "notify": a command that is started once it sends READY=1 (sd_notify)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    cause: ExitCause
    code: int | None = None
    signal: int | None = None
    at_ms: int = 0

    def describe(self) -> str:
        if self.cause is ExitCause.SPAWN_FAILED:
            return "could not be spawned"
        if self.signal is not None:
            how = f"killed by {_signal_name(self.signal)}"
        else:
            how = f"exited with code {self.code}"
        return how if self.cause in (ExitCause.EXIT, ExitCause.SIGNAL) else f"{how} ({self.cause})"


@dataclass(frozen=True, slots=True)
class Service:
    """Everything the core remembers about one service; replaced, never mutated."""

    state: ServiceState = ServiceState.STOPPED
    incarnation: int = 0  # bumped at every spawn; part of the worker id
    pid: int | None = None
    spawned_ms: int | None = None
    running_since_ms: int | None = None
    hello: bool = False  # the current worker has said hello (heartbeats are watched from then on)
    last_heartbeat_ms: int | None = None
    last_watchdog_ms: int | None = None  # the service's own ctx.heartbeat(), when it has a watchdog
    restarts: int = 0  # automatic restarts performed, ever
    restart_history_ms: tuple[int, ...] = ()
    failures: int = 0  # consecutive unstable failures (backoff step)
    last_exit: ExitInfo | None = None
    last_error: str | None = None
    error_reported: bool = False  # the current worker reported its own error (a traceback)
    ready: bool = False  # a type = "notify" worker sent READY=1 (its WATCHDOG=1 are watched from then on)
    notify_status: str | None = None  # its last STATUS=
    main_pid: int | None = None  # its MAINPID=
    notify_phase: str | None = None  # "reloading" (RELOADING=1, until READY=1) or "stopping" (STOPPING=1)
    after_stop: After = After.STAY_STOPPED
    kill_cause: ExitCause | None = None  # why supervise is stopping it, recorded as the exit cause
    backoff_until_ms: int | None = None


# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRequested:
    pass


@dataclass(frozen=True, slots=True)
class StopRequested:
    pass


@dataclass(frozen=True, slots=True)
class RestartRequested:
    pass


@dataclass(frozen=True, slots=True)
class KillRequested:
    """End the worker now with SIGKILL and start a fresh one (a run ignored its cancellation)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class PauseRequested:
    pass


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    pass


@dataclass(frozen=True, slots=True)
class WorkerSpawned:
    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    error: str


@dataclass(frozen=True, slots=True)
class HelloReceived:
    pass


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    pass


@dataclass(frozen=True, slots=True)
class WatchdogReceived:
    """The service's own code called ctx.heartbeat()."""


@dataclass(frozen=True, slots=True)
class Notified:
    """A datagram on a type = "notify" service's NOTIFY_SOCKET, as KEY=VALUE fields (sd_notify)."""

    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ErrorReported:
    """The worker's target raised; the traceback arrives before the exit."""

    message: str


@dataclass(frozen=True, slots=True)
class WorkerExited:
    code: int | None
    signal: int | None


@dataclass(frozen=True, slots=True)
class OverMemory:
    rss_bytes: int
    limit_bytes: int


@dataclass(frozen=True, slots=True)
class TimerFired:
    timer: Timer


Event = (
    StartRequested
    | StopRequested
    | RestartRequested
    | KillRequested
    | PauseRequested
    | ResumeRequested
    | WorkerSpawned
    | SpawnFailed
    | HelloReceived
    | HeartbeatReceived
    | WatchdogReceived
    | Notified
    | ErrorReported
    | WorkerExited
    | OverMemory
    | TimerFired
)

# -- actions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    incarnation: int


@dataclass(frozen=True, slots=True)
class SignalGroup:
    signal: int


@dataclass(frozen=True, slots=True)
class SendWorker:
    kind: str  # "stop" | "pause" | "resume"


@dataclass(frozen=True, slots=True)
class ArmTimer:
    timer: Timer
    at_ms: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, slots=True)
class Emit:
    """A fact for the log, the events stream and the run history."""

    kind: str
    detail: Mapping[str, object] = field(default_factory=dict)
    message: str = ""


Action = Spawn | SignalGroup | SendWorker | ArmTimer | CancelTimer | Emit
Result = tuple["Service", list[Action]]


# -- the machine -------------------------------------------------------------


def step(
    svc: Service, event: Event, *, now_ms: int, spec: ServiceSpec, rng: random.Random
) -> tuple[Service, list[Action]]:
    """Apply `event` at `now_ms` and return the new service record and the actions to take.

    Events that do not apply in the current state (a late heartbeat, a stop of a stopped
    service) change nothing and return no actions; the control layer checks states first
    when it needs to refuse a command.
    """
    handler: Callable[[Service, Any, int, ServiceSpec, random.Random], Result] = _HANDLERS[type(event)]
    return handler(svc, event, now_ms, spec, rng)


def _move(svc: Service, to: ServiceState, **changes: object) -> Service:
    if to is not svc.state and to not in ALLOWED[svc.state]:
        raise InvalidTransition(f"{svc.state} -> {to} is not an allowed transition")
    return replace(svc, state=to, **changes)  # type: ignore[arg-type]


def _state_event(svc: Service, to: ServiceState, **detail: object) -> Emit:
    return Emit("state", {"from": str(svc.state), "to": str(to), **detail})


def _spawn(svc: Service, now_ms: int, *, reset: bool = False) -> tuple[Service, list[Action]]:
    incarnation = svc.incarnation + 1
    extra: dict[str, object] = {"restart_history_ms": (), "failures": 0, "last_error": None} if reset else {}
    new = _move(
        svc,
        ServiceState.STARTING,
        incarnation=incarnation,
        pid=None,
        spawned_ms=now_ms,
        running_since_ms=None,
        hello=False,
        last_heartbeat_ms=None,
        after_stop=After.STAY_STOPPED,
        kill_cause=None,
        backoff_until_ms=None,
        error_reported=False,
        ready=False,
        notify_status=None,
        main_pid=None,
        notify_phase=None,
        **extra,
    )
    return new, [_state_event(svc, ServiceState.STARTING), Spawn(incarnation)]


def _on_start(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state in (ServiceState.STOPPED, ServiceState.EXITED, ServiceState.FATAL):
        return _spawn(svc, now_ms, reset=True)
    if svc.state is ServiceState.BACKOFF:
        new, actions = _spawn(svc, now_ms, reset=True)
        return new, [CancelTimer(Timer.BACKOFF), *actions]
    if svc.state is ServiceState.STOPPING:
        # Started while stopping: come back up as soon as the old worker is gone.
        return replace(svc, after_stop=After.RESTART), []
    return svc, []


def _begin_stop(
    svc: Service, now_ms: int, spec: ServiceSpec, after: After, cause: ExitCause, sig: int | None = None
) -> tuple[Service, list[Action]]:
    sig = spec.stop_signal if sig is None else sig
    actions: list[Action] = [
        _state_event(svc, ServiceState.STOPPING, cause=str(cause)),
        CancelTimer(Timer.START),
        CancelTimer(Timer.HEARTBEAT),
        CancelTimer(Timer.WATCHDOG),
    ]
    if svc.pid is None:
        # Spawn requested but not done yet: the exit (or spawn failure) arrives shortly.
        return _move(svc, ServiceState.STOPPING, after_stop=after, kill_cause=cause), actions
    if spec.python and svc.hello and sig != signal.SIGKILL:
        actions.append(SendWorker("stop"))
    actions.append(SignalGroup(sig))
    if svc.state is ServiceState.PAUSED and not spec.python:
        actions.append(SignalGroup(signal.SIGCONT))  # a stopped process cannot act on SIGTERM
    actions.append(ArmTimer(Timer.KILL, now_ms + spec.stop_timeout_ms))
    return _move(svc, ServiceState.STOPPING, after_stop=after, kill_cause=cause), actions


def _on_stop(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED):
        return _begin_stop(svc, now_ms, spec, After.STAY_STOPPED, ExitCause.STOPPED)
    if svc.state is ServiceState.STOPPING:
        return replace(svc, after_stop=After.STAY_STOPPED, kill_cause=ExitCause.STOPPED), []
    if svc.state is ServiceState.BACKOFF:
        new = _move(svc, ServiceState.STOPPED, backoff_until_ms=None)
        return new, [CancelTimer(Timer.BACKOFF), _state_event(svc, ServiceState.STOPPED)]
    return svc, []


def _on_restart(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED):
        return _begin_stop(svc, now_ms, spec, After.RESTART, ExitCause.STOPPED)
    if svc.state is ServiceState.STOPPING:
        return replace(svc, after_stop=After.RESTART), []
    return _on_start(svc, _e, now_ms, spec, rng)


def _on_kill(svc: Service, e: KillRequested, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED):
        new, actions = _begin_stop(svc, now_ms, spec, After.RESTART, ExitCause.STOPPED, signal.SIGKILL)
        return new, [Emit("killed", {"pid": svc.pid}, e.reason), *actions]
    if svc.state is ServiceState.STOPPING and svc.pid is not None:
        # Already on its way out (gracefully): no need to wait for stop_timeout.
        return svc, [Emit("killed", {"pid": svc.pid}, e.reason), SignalGroup(signal.SIGKILL)]
    return svc, []


def _on_pause(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state is not ServiceState.RUNNING:
        return svc, []
    action: Action = SendWorker("pause") if spec.python else SignalGroup(signal.SIGSTOP)
    return _move(svc, ServiceState.PAUSED), [_state_event(svc, ServiceState.PAUSED), action]


def _on_resume(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state is not ServiceState.PAUSED:
        return svc, []
    action: Action = SendWorker("resume") if spec.python else SignalGroup(signal.SIGCONT)
    actions: list[Action] = [_state_event(svc, ServiceState.RUNNING), action]
    new = _move(svc, ServiceState.RUNNING)
    # A paused worker's heartbeats are not watched while SIGSTOPped; start the clock afresh.
    if svc.hello:
        new = replace(new, last_heartbeat_ms=now_ms)
        actions.append(ArmTimer(Timer.HEARTBEAT, now_ms + spec.heartbeat_timeout_ms))
    if (svc.hello or svc.ready) and spec.watchdog_timeout_ms is not None:
        new = replace(new, last_watchdog_ms=now_ms)
        actions.append(ArmTimer(Timer.WATCHDOG, now_ms + spec.watchdog_timeout_ms))
    return new, actions


def _on_spawned(svc: Service, e: WorkerSpawned, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state is ServiceState.STOPPING:
        # Stop arrived between the spawn request and the spawn: stop it now.
        svc = replace(svc, pid=e.pid)
        return svc, [SignalGroup(spec.stop_signal), ArmTimer(Timer.KILL, now_ms + spec.stop_timeout_ms)]
    if svc.state is not ServiceState.STARTING:
        return svc, []
    new = replace(svc, pid=e.pid, spawned_ms=now_ms)
    actions: list[Action] = [Emit("spawned", {"pid": e.pid, "incarnation": svc.incarnation})]
    if spec.start_timeout_ms == 0 and not spec.python and not spec.notify:
        return _running(new, now_ms, actions)
    actions.append(ArmTimer(Timer.START, now_ms + spec.start_timeout_ms))
    return new, actions


def _running(svc: Service, now_ms: int, actions: list[Action]) -> tuple[Service, list[Action]]:
    actions.append(_state_event(svc, ServiceState.RUNNING, pid=svc.pid))
    return _move(svc, ServiceState.RUNNING, running_since_ms=now_ms), actions


def _on_spawn_failed(svc: Service, e: SpawnFailed, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state not in (ServiceState.STARTING, ServiceState.STOPPING):
        return svc, []
    svc = replace(svc, last_error=e.error, last_exit=ExitInfo(ExitCause.SPAWN_FAILED, at_ms=now_ms))
    actions: list[Action] = [Emit("spawn_failed", {"error": e.error}, f"could not spawn: {e.error}")]
    if svc.state is ServiceState.STOPPING:
        return _after_stopped(svc, now_ms, spec, rng, actions)
    wants = wants_restart(spec.restart, Outcome.EXIT_CODE, spec.exit_rules)
    return _apply_policy(svc, now_ms, spec, rng, actions, wants=wants, ran_ms=0)


def _on_hello(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state not in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED) or svc.hello:
        return svc, []
    new = replace(svc, hello=True, last_heartbeat_ms=now_ms, last_watchdog_ms=now_ms)
    actions: list[Action] = [ArmTimer(Timer.HEARTBEAT, now_ms + spec.heartbeat_timeout_ms)]
    if spec.watchdog_timeout_ms is not None:
        actions.append(ArmTimer(Timer.WATCHDOG, now_ms + spec.watchdog_timeout_ms))
    if svc.state is ServiceState.STARTING:
        actions.insert(0, CancelTimer(Timer.START))
        return _running(new, now_ms, actions)
    return new, actions


def _on_heartbeat(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if not svc.hello or svc.state not in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED):
        return svc, []
    # Only the timestamp moves; the heartbeat timer re-checks it when it fires.
    return replace(svc, last_heartbeat_ms=now_ms), []


def _on_watchdog(svc: Service, _e: object, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if not svc.hello or svc.state not in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.PAUSED):
        return svc, []
    return replace(svc, last_watchdog_ms=now_ms), []


def _on_notified(svc: Service, e: Notified, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    """READY=1, STATUS=, WATCHDOG=1 (or =trigger), MAINPID=, RELOADING=1, STOPPING=1, as systemd reads them."""
    if not spec.notify or svc.state not in ALIVE or svc.pid is None:
        return svc, []
    f = e.fields
    actions: list[Action] = []
    if "STATUS" in f:
        svc = replace(svc, notify_status=f["STATUS"])
    if f.get("MAINPID", "").isdigit():
        svc = replace(svc, main_pid=int(f["MAINPID"]))
    for key, phase in (("RELOADING", "reloading"), ("STOPPING", "stopping")):
        if f.get(key) == "1" and svc.notify_phase != phase:
            svc = replace(svc, notify_phase=phase)
            actions.append(Emit(phase, {"pid": svc.pid}, f"the service says it is {phase} ({key}=1)"))
    if f.get("READY") == "1":
        svc, more = _notify_ready(svc, now_ms, spec)
        actions += more
    if f.get("WATCHDOG") == "1" and svc.ready:
        svc = replace(svc, last_watchdog_ms=now_ms)
    elif f.get("WATCHDOG") == "trigger" and svc.state in (ServiceState.STARTING, ServiceState.RUNNING):
        message = "the service asked for its watchdog action (WATCHDOG=trigger); killing it"
        new, kill = _kill_hung(replace(svc, last_error=message), now_ms, spec)
        return new, [*actions, Emit("hung", {"trigger": True}, message), *kill]
    return svc, actions


def _notify_ready(svc: Service, now_ms: int, spec: ServiceSpec) -> tuple[Service, list[Action]]:
    """READY=1: a starting service is RUNNING; a reloading one is done reloading."""
    if svc.notify_phase == "reloading":
        svc = replace(svc, notify_phase=None)
    if svc.ready or svc.state is not ServiceState.STARTING:
        return svc, []
    svc = replace(svc, ready=True, last_watchdog_ms=now_ms)
    actions: list[Action] = [CancelTimer(Timer.START)]
    if spec.watchdog_timeout_ms is not None:
        actions.append(ArmTimer(Timer.WATCHDOG, now_ms + spec.watchdog_timeout_ms))
    return _running(svc, now_ms, actions)


def _on_error(svc: Service, e: ErrorReported, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    return replace(svc, last_error=e.message, error_reported=True), [
        Emit("error", {"error": e.message}, "the target raised")
    ]


def _on_timer(svc: Service, e: TimerFired, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if e.timer is Timer.BACKOFF and svc.state is ServiceState.BACKOFF:
        return _spawn(svc, now_ms)
    if e.timer is Timer.START and svc.state is ServiceState.STARTING:
        if not spec.python and not spec.notify:
            return _running(svc, now_ms, [])
        waited = "READY=1 (sd_notify)" if spec.notify else "hello"
        slow = "start" if spec.notify else "import"
        message = (
            f"no {waited} within start_timeout ({format_duration_ms(spec.start_timeout_ms)}); "
            f"raise start_timeout if the service is slow to {slow}"
        )
        new = replace(svc, last_error=message)
        new, actions = _begin_stop(new, now_ms, spec, After.APPLY_POLICY, ExitCause.START_TIMEOUT)
        return new, [Emit("start_timeout", {}, message), *actions]
    if e.timer is Timer.HEARTBEAT and svc.hello and svc.state in (ServiceState.STARTING, ServiceState.RUNNING):
        assert svc.last_heartbeat_ms is not None
        silent_ms = now_ms - svc.last_heartbeat_ms
        if silent_ms < spec.heartbeat_timeout_ms:
            return svc, [ArmTimer(Timer.HEARTBEAT, svc.last_heartbeat_ms + spec.heartbeat_timeout_ms)]
        message = (
            f"no heartbeat for {format_duration_ms(silent_ms)} (heartbeat_timeout "
            f"{format_duration_ms(spec.heartbeat_timeout_ms)}); killing the hung worker"
        )
        new, actions = _kill_hung(replace(svc, last_error=message), now_ms, spec)
        return new, [Emit("hung", {"silent_ms": silent_ms}, message), *actions]
    if e.timer is Timer.WATCHDOG and (svc.hello or svc.ready) and svc.state is ServiceState.RUNNING:
        assert svc.last_watchdog_ms is not None and spec.watchdog_timeout_ms is not None
        silent_ms = now_ms - svc.last_watchdog_ms
        if silent_ms < spec.watchdog_timeout_ms:
            return svc, [ArmTimer(Timer.WATCHDOG, svc.last_watchdog_ms + spec.watchdog_timeout_ms)]
        call = "send WATCHDOG=1" if spec.notify else "call ctx.heartbeat()"
        message = (
            f"the service's code did not {call} for {format_duration_ms(silent_ms)} "
            f"(watchdog {format_duration_ms(spec.watchdog_timeout_ms)}); killing the stuck worker"
        )
        new, actions = _kill_hung(replace(svc, last_error=message), now_ms, spec)
        return new, [Emit("hung", {"silent_ms": silent_ms, "watchdog": True}, message), *actions]
    if e.timer is Timer.HEARTBEAT and svc.state is ServiceState.PAUSED and svc.hello:
        return svc, [ArmTimer(Timer.HEARTBEAT, now_ms + spec.heartbeat_timeout_ms)]
    if e.timer is Timer.WATCHDOG and svc.state is ServiceState.PAUSED and spec.watchdog_timeout_ms is not None:
        # A paused service's own code may stand still: its watchdog restarts on resume.
        return replace(svc, last_watchdog_ms=now_ms), [ArmTimer(Timer.WATCHDOG, now_ms + spec.watchdog_timeout_ms)]
    if e.timer is Timer.KILL and svc.state is ServiceState.STOPPING and svc.pid is not None:
        if svc.kill_cause is ExitCause.HUNG:
            waited = f"hang_signal {_signal_name(spec.hang_signal)} ({format_duration_ms(_hang_grace_ms(spec))})"
        else:
            waited = f"stop_timeout ({format_duration_ms(spec.stop_timeout_ms)})"
        message = f"worker (pid {svc.pid}) did not exit within {waited}; sending SIGKILL to its process group"
        return svc, [Emit("killed", {"pid": svc.pid}, message), SignalGroup(signal.SIGKILL)]
    return svc, []


def _kill_hung(svc: Service, now_ms: int, spec: ServiceSpec) -> tuple[Service, list[Action]]:
    """Stop a worker that stopped answering: no stop message, no stop_signal, no stop_timeout.

    It already failed to answer for heartbeat_timeout (or its watchdog); asking it to
    stop gracefully would only add stop_timeout to the outage. It gets `hang_signal`
    (SIGKILL by default), SIGCONT in case it is SIGSTOPped, and SIGKILL after
    `hang_grace_ms` if the hang signal was another one and did not end it.
    """
    actions: list[Action] = [
        _state_event(svc, ServiceState.STOPPING, cause=str(ExitCause.HUNG)),
        CancelTimer(Timer.START),
        CancelTimer(Timer.HEARTBEAT),
        CancelTimer(Timer.WATCHDOG),
        SignalGroup(spec.hang_signal),
    ]
    if spec.hang_signal != signal.SIGKILL:
        actions.append(SignalGroup(signal.SIGCONT))  # a SIGSTOPped worker acts on it only once continued
    actions.append(ArmTimer(Timer.KILL, now_ms + _hang_grace_ms(spec)))
    return _move(svc, ServiceState.STOPPING, after_stop=After.APPLY_POLICY, kill_cause=ExitCause.HUNG), actions


def _hang_grace_ms(spec: ServiceSpec) -> int:
    return min(spec.hang_grace_ms, spec.stop_timeout_ms)


def _on_over_memory(svc: Service, e: OverMemory, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state not in (ServiceState.RUNNING, ServiceState.STARTING, ServiceState.PAUSED):
        return svc, []
    message = f"RSS {e.rss_bytes} bytes is over max_memory ({e.limit_bytes} bytes); restarting"
    new = replace(svc, last_error=message)
    new, actions = _begin_stop(new, now_ms, spec, After.APPLY_POLICY, ExitCause.MEMORY)
    return new, [Emit("memory_exceeded", {"rss_bytes": e.rss_bytes, "limit_bytes": e.limit_bytes}, message), *actions]


def _on_exited(svc: Service, e: WorkerExited, now_ms: int, spec: ServiceSpec, rng: random.Random) -> Result:
    if svc.state not in ALIVE:
        return svc, []
    if svc.state is ServiceState.STOPPING:
        cause = svc.kill_cause or ExitCause.STOPPED
    else:
        cause = ExitCause.SIGNAL if e.signal is not None else ExitCause.EXIT
    info = ExitInfo(cause, e.code, e.signal, now_ms)
    ran_ms = now_ms - (svc.spawned_ms if svc.spawned_ms is not None else now_ms)
    detail: dict[str, object] = {
        "pid": svc.pid,
        "code": e.code,
        "signal": e.signal,
        "cause": str(cause),
        "ran_ms": ran_ms,
    }
    actions: list[Action] = [
        CancelTimer(Timer.START),
        CancelTimer(Timer.HEARTBEAT),
        CancelTimer(Timer.WATCHDOG),
        CancelTimer(Timer.KILL),
        Emit("exited", detail, f"worker (pid {svc.pid}) {info.describe()} after {format_duration_ms(ran_ms)}"),
    ]
    was_starting = svc.state is ServiceState.STARTING
    svc = replace(svc, pid=None, last_exit=info, hello=False, ready=False)
    if svc.state is ServiceState.STOPPING:
        return _after_stopped(svc, now_ms, spec, rng, actions)
    outcome = spec.exit_rules.outcome(e.code, e.signal)
    if outcome is not Outcome.CLEAN and not svc.error_reported:
        svc = replace(svc, last_error=f"worker {info.describe()}")
    if was_starting and outcome is Outcome.CLEAN:
        outcome = Outcome.EXIT_CODE  # exiting before the start was confirmed is a failed start, whatever the code
    wants = wants_restart(spec.restart, outcome, spec.exit_rules, e.code, e.signal)
    return _apply_policy(svc, now_ms, spec, rng, actions, wants=wants, ran_ms=ran_ms)


_KILL_OUTCOME: Mapping[ExitCause, Outcome] = {
    ExitCause.HUNG: Outcome.WATCHDOG,
    ExitCause.START_TIMEOUT: Outcome.TIMEOUT,
    ExitCause.MEMORY: Outcome.SIGNAL,  # as the kernel's OOM kill would be
}


def _after_stopped(
    svc: Service, now_ms: int, spec: ServiceSpec, rng: random.Random, actions: list[Action]
) -> tuple[Service, list[Action]]:
    if svc.after_stop is After.RESTART:
        new, more = _spawn(svc, now_ms)
        return new, [*actions, *more]
    if svc.after_stop is After.APPLY_POLICY:
        ran_ms = now_ms - (svc.spawned_ms if svc.spawned_ms is not None else now_ms)
        outcome = _KILL_OUTCOME.get(svc.kill_cause or ExitCause.EXIT, Outcome.EXIT_CODE)
        wants = wants_restart(spec.restart, outcome, spec.exit_rules)
        return _apply_policy(svc, now_ms, spec, rng, actions, wants=wants, ran_ms=ran_ms)
    actions.append(_state_event(svc, ServiceState.STOPPED))
    return _move(svc, ServiceState.STOPPED, kill_cause=None), actions


def _apply_policy(
    svc: Service,
    now_ms: int,
    spec: ServiceSpec,
    rng: random.Random,
    actions: list[Action],
    *,
    wants: bool,
    ran_ms: int,
) -> tuple[Service, list[Action]]:
    if not wants:
        actions.append(_state_event(svc, ServiceState.EXITED))
        return _move(svc, ServiceState.EXITED, kill_cause=None), actions
    decision = next_restart(
        svc.restart_history_ms, svc.failures, now_ms=now_ms, ran_ms=ran_ms, policy=spec.policy, rng=rng
    )
    if isinstance(decision, GiveUp):
        actions.append(Emit("fatal", {"reason": decision.reason}, decision.reason))
        actions.append(_state_event(svc, ServiceState.FATAL))
        return _move(
            svc, ServiceState.FATAL, last_error=_join(svc.last_error, decision.reason), kill_cause=None
        ), actions
    svc = replace(
        svc,
        restarts=svc.restarts + 1,
        restart_history_ms=decision.history_ms,
        failures=decision.failures,
        kill_cause=None,
    )
    if decision.delay_ms == 0:
        new, more = _spawn(svc, now_ms)
        return new, [*actions, Emit("restarting", {"delay_ms": 0, "restarts": svc.restarts}), *more]
    until = now_ms + decision.delay_ms
    actions.append(Emit("restarting", {"delay_ms": decision.delay_ms, "restarts": svc.restarts}))
    actions.append(_state_event(svc, ServiceState.BACKOFF, delay_ms=decision.delay_ms))
    actions.append(ArmTimer(Timer.BACKOFF, until))
    return _move(svc, ServiceState.BACKOFF, backoff_until_ms=until), actions


def _join(first: str | None, second: str) -> str:
    return second if not first else f"{first}\n{second}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_HANDLERS: dict[type, Callable[..., Result]] = {
    StartRequested: _on_start,
    StopRequested: _on_stop,
    RestartRequested: _on_restart,
    KillRequested: _on_kill,
    PauseRequested: _on_pause,
    ResumeRequested: _on_resume,
    WorkerSpawned: _on_spawned,
    SpawnFailed: _on_spawn_failed,
    HelloReceived: _on_hello,
    HeartbeatReceived: _on_heartbeat,
    WatchdogReceived: _on_watchdog,
    Notified: _on_notified,
    ErrorReported: _on_error,
    WorkerExited: _on_exited,
    OverMemory: _on_over_memory,
    TimerFired: _on_timer,
}
