"""`SyncSupervisor`: a `Supervisor` on a private event loop in a background thread.

For programs that are not asyncio — a script, a Flask or Django process, a test
harness:

    with SyncSupervisor.from_file("supervise.toml") as sup:
        print(sup.status())
        sup.restart("checker")

Every method is a blocking call into the supervisor's loop, with the same name,
arguments and result as the control command it runs (`supervise.protocol.Client`
has the same methods over a socket), and the same errors: `ServiceNotFound`,
`ProtocolError` (`.code`, e.g. `bad_args`). Unlike the clients, one
`SyncSupervisor` may be shared by several threads.

The background thread is the supervisor's own: it runs the loop that owns the
sockets and the child processes, and it spawns every worker. That matters,
because a Python worker asks for PR_SET_PDEATHSIG, which the kernel fires when
the *thread* that forked it ends, not the process. So the thread starts before
the first worker and ends last: `close()` stops every worker, then the loop,
then the thread. If the host process dies first, its workers go with it
(PR_SET_PDEATHSIG, the orphan guard). A host that forgets `close()` gets it at
interpreter exit (`atexit`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from supervise.supervisor.config.loader import Config, load_config
from supervise.supervisor.daemon.commands import resolve
from supervise.supervisor.daemon.supervisor import Supervisor

log = logging.getLogger("supervise")

__all__ = ["SyncSupervisor"]


class SyncSupervisor:
    """Runs a `Supervisor` on its own event loop in a background thread; a context manager.

    Args:
        config: a `Config` (see `load_config`), a dict in the config file's shape,
            or a `Supervisor` built with the seams you need (clock, rng).
        **kwargs: keyword arguments of `Supervisor` when `config` is not one.

    `open()` (or `with`) starts the supervisor and returns once its sockets are
    bound and its autostart services are starting, raising what `Supervisor.start`
    raised (`ConfigError`, `AlreadyRunning`, ...). `close()` stops every worker
    and returns once the thread has ended.

    Signal handlers are never installed: only the main thread may, and the
    host's are its own. To stop on SIGTERM, call `close()` from your handler.
    """

    def __init__(self, config: Supervisor | Config | Mapping[str, Any], **kwargs: Any) -> None:
        if kwargs.get("handle_signals"):
            raise ValueError(
                "SyncSupervisor cannot install signal handlers: its event loop runs in a background "
                "thread and only the main thread may; install your own and call close() from them"
            )
        if isinstance(config, Supervisor):
            if kwargs:
                raise TypeError(f"pass {', '.join(sorted(kwargs))} to Supervisor(...), not to SyncSupervisor")
            self._sup = config
        else:
            self._sup = Supervisor(config, **kwargs)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._crash: BaseException | None = None
        self._lock = threading.Lock()  # guards _finished and _pending
        self._finished = False  # the loop has ended: nothing can be submitted to it any more
        self._closing = False  # close() was called, maybe before the loop existed
        self._pending: set[concurrent.futures.Future[Any]] = set()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Self:
        """A `SyncSupervisor` for the config file at `path` (not started yet)."""
        return cls(load_config(path), **kwargs)

    # -- lifecycle -----------------------------------------------------------

    @property
    def supervisor(self) -> Supervisor:
        """The wrapped `Supervisor`. Its methods belong to its loop: call them only through this facade."""
        return self._sup

    @property
    def config(self) -> Config:
        return self._sup.config

    @property
    def endpoint(self) -> str:
        """The control endpoint, for a `Client` in another process (or thread)."""
        return self._sup.config.supervisor.control_endpoint

    @property
    def is_running(self) -> bool:
        """True between a successful `open()` and the end of the supervisor's thread."""
        return self._started.is_set() and self._startup_error is None and not self._finished

    def open(self) -> Self:
        """Start the thread and the supervisor in it; return once it is up. Only once."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this SyncSupervisor was already opened; create a new one to run again")
            name = f"supervise-{self._sup.config.supervisor.state_dir.name}"
            # A daemon thread, so that a host that never calls close() can still exit: atexit closes it.
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        try:
            self._started.wait()
        except BaseException:  # Ctrl-C while starting: leave nothing running behind
            self.close()
            raise
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        atexit.register(self.close)
        return self

    def close(self) -> None:
        """Stop every worker (as `Supervisor.close` does), then the loop and the thread.

        Blocks until all of that is done; idempotent. Raises what the supervisor's
        loop died of, if it died.
        """
        thread = self._thread
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError(
                "close() called from the supervisor's own thread would wait for itself; "
                "call Supervisor.request_shutdown() there instead"
            )
        atexit.unregister(self.close)
        with self._lock:
            self._closing = True  # seen by _serve if its loop is not up yet
            if not self._finished and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._sup.request_shutdown)
                except RuntimeError:
                    pass  # the loop has just closed: the thread is ending anyway
        thread.join()
        crash, self._crash = self._crash, None
        if crash is not None:
            raise crash

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the supervisor stops (a `shutdown` command, or `close()` from another thread).

        Returns False if it is still running after `timeout_s`.
        """
        if self._thread is None:
            raise RuntimeError("this SyncSupervisor was never opened; call open() or use it in a with block")
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - handed to close(), which raises it
            log.exception("the supervisor's event loop died")
            self._crash = e
        finally:
            with self._lock:
                self._finished = True
                pending, self._pending = self._pending, set()
            for future in pending:  # submitted after the loop's last turn: they would never finish
                if not future.done():
                    future.cancel()
            self._started.set()  # in case the loop could not even start

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._sup.start()
        except BaseException as e:  # noqa: BLE001 - raised again by open(), in the caller's thread
            self._startup_error = e
            return
        finally:
            self._started.set()
        if self._closing:
            self._sup.request_shutdown()
        await self._sup.serve_forever()

    def _submit(self, command: str, args: Mapping[str, object]) -> Any:
        """Run control command `command` on the loop and wait for its result."""
        if self._thread is threading.current_thread():
            raise RuntimeError(
                f"SyncSupervisor.{command}() called from the supervisor's own thread would deadlock; "
                "await the Supervisor's own methods there"
            )
        coro = _dispatch(self._sup, command, dict(args))
        with self._lock:
            if self._loop is None or self._finished or self._startup_error is not None:
                coro.close()
                raise RuntimeError(self._not_running(command))
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            except RuntimeError:  # the loop closed a moment ago
                coro.close()
                raise RuntimeError(self._not_running(command)) from None
            self._pending.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RuntimeError(f"{command}: the supervisor stopped before it was done") from None
        finally:
            with self._lock:
                self._pending.discard(future)

    def _not_running(self, command: str) -> str:
        if self._thread is None:
            return f"{command}: the supervisor is not running; call open() or use SyncSupervisor in a with block"
        return f"{command}: the supervisor has stopped (closed, or shut down by a 'shutdown' command)"

    # -- commands: the same names and results as supervise.protocol.Client --

    def call(self, command: str, /, **args: object) -> Any:
        """Run any control command (docs/protocol.md) in process; returns its result.

        Raises `ProtocolError` (unknown command, bad arguments, conflict),
        `ServiceNotFound`, or another `SuperviseError`, as the control socket
        would have replied them.
        """
        return self._submit(command, args)

    def ping(self) -> dict[str, Any]:
        """The supervisor's pid, version and uptime."""
        result: dict[str, Any] = self._submit("ping", {})
        return result

    def status(self, name: str | None = None, *, detail: bool = False) -> dict[str, Any]:
        """`{"supervisor": {...}, "services": [{"name", "state", "pid", ...}, ...]}`, of one service or all.

        `detail` adds each service's configuration facts and counters (kind, origin, incarnation...).
        """
        args: dict[str, object] = {} if name is None else {"name": name}
        if detail:
            args["detail"] = True
        result: dict[str, Any] = self._submit("status", args)
        return result

    def start(self, name: str, *, wait: bool = True) -> dict[str, Any]:
        """Start a stopped, exited or FATAL service; with `wait`, until it runs (or fails)."""
        return self._act("start", name, wait)

    def stop(self, name: str, *, wait: bool = True) -> dict[str, Any]:
        """Stop a service (stop message and signal, then SIGKILL); with `wait`, until it is down."""
        return self._act("stop", name, wait)

    def restart(self, name: str, *, wait: bool = True) -> dict[str, Any]:
        """Stop the service if it runs, then start it again."""
        return self._act("restart", name, wait)

    def pause(self, name: str) -> dict[str, Any]:
        """Pause a service (Python: cooperative, `ctx.paused`; command: SIGSTOP to its group)."""
        return self._act("pause", name, True)

    def resume(self, name: str) -> dict[str, Any]:
        """Resume a paused service."""
        return self._act("resume", name, True)

    def _act(self, command: str, name: str, wait: bool) -> dict[str, Any]:
        result: dict[str, Any] = self._submit(command, {"name": name, "wait": wait})
        return result


async def _dispatch(sup: Supervisor, command: str, args: dict[str, object]) -> object:
    """What the control socket does with a decoded request, minus the socket."""
    spec, valid = resolve(command, args)
    return await spec.handler(sup, valid)
