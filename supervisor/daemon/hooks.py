"""Service hooks: commands run around a service's life, as asyncio subprocesses.

`before_start`, `after_start`, `before_stop`, `after_stop` and `on_fatal` are
argv lists run with the service's environment (its `env`, its user's account),
its `cwd` and its user and groups, plus:

- `SUPERVISE_SERVICE`: the instance name (`web`, `web:1`),
- `SUPERVISE_HOOK`: which hook this is,
- `SUPERVISE_PID`: the worker's pid (after_start, before_stop, after_stop),
- `SUPERVISE_EXIT_CODE` or `SUPERVISE_EXIT_SIGNAL`: how it ended (after_stop).

A hook gets `hook_timeout`; then its process group is SIGKILLed. Its output goes
to the service's log, each line prefixed `[hook NAME]`. The event loop never
waits on a hook: each runs as its own task. What a hook's end means:

- `before_start`: the worker is spawned when it exits 0; any other end is a
  failed start (cause `spawn_failed`, the hook's end in `last_error`), so the
  restart policy applies.
- `before_stop` (a requested stop or restart only, not a kill): the stop signal
  is sent when it ends, whatever its exit status; `stop_timeout` counts from the
  start of the stop, so the hook's time is part of it.
- the others only report: their status is logged and published as a `hook` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass

from supervise.supervisor.config.model import SupervisorConfig
from supervise.supervisor.core import state as core
from supervise.supervisor.daemon.environment import worker_environment
from supervise.supervisor.daemon.launch import identity_for
from supervise.supervisor.daemon.output import RotatingLog
from supervise.supervisor.daemon.runtime import ServiceRuntime

__all__ = ["HOOKS", "HookOutcome", "HookRunner", "run_hook"]

HOOKS = ("before_start", "after_start", "before_stop", "after_stop", "on_fatal")
_S = core.ServiceState


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """How a hook process ended."""

    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None  # it could not be started

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.error is not None:
            return f"could not run: {self.error}"
        if self.timed_out:
            return "timed out (hook_timeout) and was killed"
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exited {self.code}"


async def run_hook(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    timeout_s: float,
    output: RotatingLog,
    prefix: bytes,
    identity: Mapping[str, object],
) -> HookOutcome:
    """Run one hook to its end (or `timeout_s`, then SIGKILL to its group); its output to `output`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            **identity,  # type: ignore[arg-type]
        )
    except OSError as e:
        return HookOutcome(error=f"{e.strerror or e}: {argv[0]}")
    assert proc.stdout is not None
    copying = asyncio.ensure_future(_copy_lines(proc.stdout, output, prefix))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid)
        await proc.wait()
    except asyncio.CancelledError:
        _kill_group(proc.pid)  # the supervisor is closing: leave no hook process behind
        copying.cancel()
        raise
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(copying, 1.0)  # a grandchild may hold the pipe: do not wait on it
    copying.cancel()
    code = proc.returncode
    assert code is not None
    if timed_out:
        return HookOutcome(timed_out=True)
    return HookOutcome(signal=-code) if code < 0 else HookOutcome(code=code)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _copy_lines(stream: asyncio.StreamReader, output: RotatingLog, prefix: bytes) -> None:
    while line := await stream.readline():
        output.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))


HeldActions = list[core.Action]


class HookRunner:
    """Starts a service's hooks at its state changes and tells the shell what to do after them.

    Args:
        sup: the `[supervisor]` settings (an http action's policy is in the env).
        open_log: the service's log, opened if it is not yet.
        emit: publish an event (service, kind, detail, message).
        spawn_after: called with (svc, incarnation, failure or None) when `before_start` has ended.
        stop_after: called with (svc, incarnation, held actions) when `before_stop` has ended.
    """

    def __init__(
        self,
        sup: SupervisorConfig,
        *,
        open_log: Callable[[ServiceRuntime], RotatingLog],
        emit: Callable[[str, str, Mapping[str, object], str], None],
        spawn_after: Callable[[ServiceRuntime, int, str | None], None],
        stop_after: Callable[[ServiceRuntime, int, HeldActions], None],
    ) -> None:
        self._sup = sup
        self._open_log = open_log
        self._emit = emit
        self._spawn_after = spawn_after
        self._stop_after = stop_after
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the shell asks ---------------------------------------------------

    def before_start(self, svc: ServiceRuntime, incarnation: int) -> None:
        """Run `before_start`; `spawn_after` gets the failure (or None) when it ends."""

        async def run() -> None:
            outcome = await self._run(svc, "before_start", {})
            failure = None if outcome.ok else f"before_start hook {outcome.describe()}"
            self._spawn_after(svc, incarnation, failure)

        self._start(run())

    def on_step(self, svc: ServiceRuntime, before: core.ServiceState, actions: list[core.Action]) -> list[core.Action]:
        """Fire the hooks a state change calls for; the actions to execute now (a stop's may wait)."""
        after = svc.record
        if after.state is before:
            return actions
        if after.state is _S.RUNNING and before is _S.STARTING and svc.config.after_start is not None:
            self._fire(svc, "after_start", {"SUPERVISE_PID": str(after.pid)})
        elif after.state is _S.FATAL and svc.config.on_fatal is not None:
            self._fire(svc, "on_fatal", {})
        elif after.state is _S.STOPPING and svc.config.before_stop is not None:
            return self._hold_stop(svc, actions)
        return actions

    def worker_exited(self, svc: ServiceRuntime, pid: int | None, code: int | None, sig: int | None) -> None:
        """Fire `after_stop` for the worker that just ended."""
        if svc.config.after_stop is None:
            return
        env = {"SUPERVISE_PID": str(pid or "")}
        env |= {"SUPERVISE_EXIT_CODE": str(code)} if code is not None else {"SUPERVISE_EXIT_SIGNAL": str(sig)}
        if sig is not None:
            env["SUPERVISE_EXIT_SIGNAL_NAME"] = signal.Signals(sig).name
        self._fire(svc, "after_stop", env)

    async def close(self) -> None:
        """Wait (briefly) for running hooks; kill what is left with the loop."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for task in self._tasks:
            task.cancel()

    # -- inside ----------------------------------------------------------------

    def _hold_stop(self, svc: ServiceRuntime, actions: list[core.Action]) -> list[core.Action]:
        """A requested stop of a running worker: its signal and stop message wait for `before_stop`."""
        record = svc.record
        if record.kill_cause is not core.ExitCause.STOPPED or record.pid is None:
            return actions  # a kill (hung, start timeout, memory) is not delayed
        held: HeldActions = [a for a in actions if isinstance(a, (core.SignalGroup, core.SendWorker))]
        if not held:
            return actions
        incarnation = record.incarnation

        async def run() -> None:
            await self._run(svc, "before_stop", {"SUPERVISE_PID": str(record.pid)})
            self._stop_after(svc, incarnation, held)

        self._start(run())
        return [a for a in actions if a not in held]

    def _fire(self, svc: ServiceRuntime, hook: str, extra: Mapping[str, str]) -> None:
        async def run() -> None:
            await self._run(svc, hook, extra)

        self._start(run())

    def _start(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, svc: ServiceRuntime, hook: str, extra: Mapping[str, str]) -> HookOutcome:
        cfg = svc.config
        argv: Sequence[str] | None = getattr(cfg, hook)
        assert argv is not None
        env = worker_environment(cfg, self._sup, os.environ)
        env |= {"SUPERVISE_SERVICE": svc.name, "SUPERVISE_HOOK": hook, **extra}
        who = identity_for(cfg)
        identity = {"user": who.uid, "group": who.gid, "extra_groups": None if who.groups is None else list(who.groups)}
        started = time.monotonic()
        outcome = await run_hook(
            argv,
            env=env,
            cwd=str(cfg.cwd),
            timeout_s=cfg.hook_timeout_ms / 1000,
            output=self._open_log(svc),
            prefix=f"[hook {hook}] ".encode(),
            identity=identity,
        )
        took_ms = round((time.monotonic() - started) * 1000)
        detail: dict[str, object] = {"hook": hook, "ok": outcome.ok, "result": outcome.describe(), "ms": took_ms}
        self._emit(svc.name, "hook", detail, f"{hook} hook {outcome.describe()} after {took_ms} ms")
        return outcome
