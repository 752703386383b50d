"""The runs of a scheduled service's warm worker, on a bounded executor.

A sync target runs on a thread pool of `concurrency` threads; an `async def`
target runs on one event loop (its own thread), at most `concurrency` at once.
Runs beyond that wait here in arrival order; the supervisor normally sends no
more than `concurrency` at a time, so this is a second bound, not the queue.
Nothing a run does (raise, return something unencodable) escapes into the
worker's threads: every outcome becomes a `run_finished` message.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from supervise.protocol import worker_env as E
from supervise.workers.context import JobContext, RunContext
from supervise.workers.service import Service
from supervise.workers.target import wants_context

DEFAULT_CONCURRENCY = 10
_shared_loops: set[asyncio.AbstractEventLoop] = set()


def is_shared_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True for a worker's long-lived run loop: clients may keep connection pools on it."""
    return loop in _shared_loops


class Sender(Protocol):
    """The worker channel as the executor uses it: queue a message, from any thread."""

    def send(self, kind: str, **fields: object) -> None: ...


class RunExecutor:
    """Executes "run" messages with at most `concurrency` runs at once.

    Args:
        service, worker_id: for each run's `RunContext`.
        channel: where run_started / run_progress / run_finished go.
        target: the resolved target (a function, a coroutine function or a Service subclass).
        concurrency: runs at once (the service's `concurrency`).
    """

    def __init__(
        self,
        *,
        service: str,
        worker_id: str,
        channel: Sender,
        target: Callable[..., object] | type,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._service_name = service
        self._worker_id = worker_id
        self._channel = channel
        self._concurrency = max(1, concurrency)
        self._service = target() if isinstance(target, type) and issubclass(target, Service) else None
        if self._service is not None:
            self._service.setup()  # once per worker; teardown() in close()
        self._target: Callable[..., object] = self._service.run_once if self._service is not None else target
        self._is_async = inspect.iscoroutinefunction(self._target)
        self._runs: dict[str, tuple[RunContext, Future[None] | asyncio.Task[None] | None]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last run finishes
        self._arriving: list[tuple[RunContext, dict[str, object]]] = []  # for the loop, not yet tasks
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._slots: asyncio.Semaphore | None = None
        self._expired: set[str] = set()  # runs cancelled because their lease ran out (workers/lease.py)
        if self._is_async:
            self._start_loop()
        else:
            self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="supervise-run")

    @property
    def in_flight(self) -> int:
        """Runs received and not finished (running or waiting for a slot)."""
        with self._lock:
            return len(self._runs)

    def has(self, run_id: str) -> bool:
        """Whether run `run_id` was received and has not finished."""
        with self._lock:
            return run_id in self._runs

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            self._slots = asyncio.Semaphore(self._concurrency)
            ready.set()
            loop.run_forever()

        self._loop = loop
        _shared_loops.add(loop)
        self._loop_thread = threading.Thread(target=run_loop, name="supervise-runs-loop", daemon=True)
        self._loop_thread.start()
        ready.wait()

    def start(self, fields: dict[str, object]) -> None:
        """Accept a "run" message (called on the channel's I/O thread; never blocks)."""
        run_id = str(fields["run_id"])
        run_ctx = RunContext(
            service=self._service_name,
            worker_id=self._worker_id,
            run_id=run_id,
            nominal_time=fields.get("nominal_time"),  # type: ignore[arg-type]
            attempt=int(fields.get("attempt") or 1),  # type: ignore[call-overload]
            report=self._channel.send,
            key=fields.get("key"),  # type: ignore[arg-type]
            not_before=float(fields.get("not_before") or 0.0),  # type: ignore[arg-type]
            epoch=int(epoch) if isinstance(epoch := fields.get("epoch"), (int, float)) else None,
        )
        args = dict(fields.get("args") or {})  # type: ignore[call-overload]
        with self._lock:
            if run_id in self._runs:
                return  # a duplicate "run" for a run already here
            if self._loop is None:
                assert self._pool is not None
                self._runs[run_id] = (run_ctx, self._pool.submit(self._execute, run_ctx, args))
                return
            self._runs[run_id] = (run_ctx, None)
            self._arriving.append((run_ctx, args))
            if len(self._arriving) > 1:
                return  # the loop has been woken for the first and takes them all
        self._loop.call_soon_threadsafe(self._take_arrivals)

    def _take_arrivals(self) -> None:
        """On the run loop: the runs that arrived since the last wake-up become tasks, in order
        (one wake-up of the loop for a whole batch of "run" messages)."""
        assert self._loop is not None
        with self._lock:
            arriving, self._arriving = self._arriving, []
            for run_ctx, args in arriving:
                task = self._loop.create_task(self._execute_async(run_ctx, args))
                self._runs[run_ctx.run_id] = (run_ctx, task)

    # -- one run -------------------------------------------------------------------------------

    def _execute(self, run_ctx: RunContext, args: dict[str, object]) -> None:
        early_s = run_ctx.not_before - time.time()
        if early_s > 0 and run_ctx.wait(early_s):
            self._finished(run_ctx, _NOT_STARTED)
            return
        self._started(run_ctx)
        try:
            call_args = (run_ctx,) if wants_context(self._target, args) else ()
            result = self._target(*call_args, **args)
            if inspect.iscoroutine(result):  # a sync function that returned a coroutine
                result = asyncio.run(result)
            fields = _success(result)
        except BaseException as e:  # noqa: BLE001 - a run's failure is reported, the worker lives on
            fields = _failure(e)
        self._finished(run_ctx, fields)

    async def _execute_async(self, run_ctx: RunContext, args: dict[str, object]) -> None:
        assert self._slots is not None
        try:
            early_s = run_ctx.not_before - time.time()
            if early_s > 0:
                await asyncio.sleep(early_s)  # handed over ahead of its time: start it on time
            async with self._slots:
                self._started(run_ctx)
                call_args = (run_ctx,) if wants_context(self._target, args) else ()
                coroutine: Coroutine[Any, Any, object] = self._target(*call_args, **args)  # type: ignore[assignment]
                fields = _success(await coroutine)
        except BaseException as e:  # noqa: BLE001 - CancelledError included (also while waiting for a slot)
            fields = _failure(e)
        self._finished(run_ctx, fields)

    def _started(self, run_ctx: RunContext) -> None:
        self._channel.send("run_started", run_id=run_ctx.run_id, at=time.time())

    def _finished(self, run_ctx: RunContext, fields: dict[str, object]) -> None:
        with self._lock:
            expired = run_ctx.run_id in self._expired
            self._expired.discard(run_ctx.run_id)
        if expired:
            # Its lease ran out: whatever it did is no outcome of ours to report (the supervisor
            # treats it as lost, and on_lost decides).
            self._channel.send("run_lease_expired", run_id=run_ctx.run_id, at=time.time())
            self._forget(run_ctx)
            return
        if run_ctx.cancelled and not fields["ok"]:
            fields["error"] = f"cancelled: {fields['error']}"
        try:
            self._channel.send("run_finished", run_id=run_ctx.run_id, at=time.time(), **fields)
        except Exception as e:  # noqa: BLE001 - e.g. a result too large for the wire: still report the end
            self._channel.send(
                "run_finished",
                run_id=run_ctx.run_id,
                at=time.time(),
                ok=False,
                result=None,
                error=f"the run's result could not be sent: {type(e).__name__}: {e}",
                traceback=None,
            )
        self._forget(run_ctx)

    def _forget(self, run_ctx: RunContext) -> None:
        with self._lock:
            self._runs.pop(run_ctx.run_id, None)
            if not self._runs:
                self._idle.notify_all()

    # -- cancel and close ---------------------------------------------------------------------------

    def cancel(self, run_id: str) -> None:
        """Cancel one run: its `ctx.cancelled` becomes true; an async run's task is cancelled too."""
        with self._lock:
            entry = self._runs.get(run_id)
        if entry is None:
            return
        entry[0].cancel()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_task, run_id)

    def expire(self, run_id: str) -> None:
        """Cancel one run because its lease ran out: its end is reported as `run_lease_expired`."""
        with self._lock:
            if run_id not in self._runs:
                return
            self._expired.add(run_id)
        self.cancel(run_id)

    def _cancel_task(self, run_id: str) -> None:
        """On the run loop (after `_take_arrivals`, so the run's task exists if the run is here)."""
        with self._lock:
            entry = self._runs.get(run_id)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()

    def close(self, timeout_s: float = 30.0) -> None:
        """Cancel the runs in flight, wait for them (up to `timeout_s`), and tear the service down."""
        with self._lock:
            run_ids = list(self._runs)
        for run_id in run_ids:
            self.cancel(run_id)
        with self._idle:
            self._idle.wait_for(lambda: not self._runs, timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            _shared_loops.discard(self._loop)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._service is not None:
            self._service.teardown()


_NOT_STARTED: dict[str, object] = {"ok": False, "result": None, "error": "before it started", "traceback": None}


def _success(result: object) -> dict[str, object]:
    return {"ok": True, "result": _plain(result), "error": None, "traceback": None}


def _failure(error: BaseException) -> dict[str, object]:
    text = "".join(traceback.format_exception(error))
    print(text, file=sys.stderr, end="", flush=True)
    return {"ok": False, "result": None, "error": f"{type(error).__name__}: {error}", "traceback": text}


def _plain(value: object) -> object:
    """A run's result as the wire can carry it: msgpack-able, or its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def concurrency_from_env(environ: dict[str, str] | Any) -> int:
    """SUPERVISE_CONCURRENCY, the service's `concurrency` (runs at once in this worker)."""
    try:
        return max(1, int(environ.get(E.CONCURRENCY, DEFAULT_CONCURRENCY)))
    except ValueError:
        return DEFAULT_CONCURRENCY


__all__ = ["DEFAULT_CONCURRENCY", "JobContext", "RunExecutor", "concurrency_from_env"]
