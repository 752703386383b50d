"""The worker process: connect back to the supervisor, say hello, heartbeat, run the target.

The supervisor starts `python -m supervise.workers` with the worker's identity in
its environment (see `WorkerEnv`). One I/O thread owns the DEALER socket: it
sends heartbeats, forwards what the main thread queues, and turns stop, pause and
resume messages into the `JobContext`. The main thread runs the target.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import zmq

from supervise.protocol.codec import decode_worker_message, encode_worker_message
from supervise.protocol.errors import ProtocolError
from supervise.workers.context import JobContext, RunContext
from supervise.workers.service import Service
from supervise.workers.target import call_target, resolve_target

_PR_SET_PDEATHSIG = 1
EXIT_TARGET_FAILED = 1
EXIT_BAD_ENVIRONMENT = 2
EXIT_SUPERVISOR_GONE = 3
_SEND_LINGER_MS = 2000


@dataclass(frozen=True, slots=True)
class WorkerEnv:
    """What the supervisor tells a worker through its environment."""

    endpoint: str  # SUPERVISE_WORKER_ENDPOINT: the supervisor's worker ROUTER
    worker_id: str  # SUPERVISE_WORKER_ID: "<service>/<incarnation>", the routing identity
    token: str  # SUPERVISE_TOKEN: per-spawn secret, carried in every message
    service: str  # SUPERVISE_SERVICE
    target: str  # SUPERVISE_TARGET: "pkg.mod:func"
    parent_pid: int  # SUPERVISE_PPID: the supervisor's pid, to catch a parent that died before prctl
    heartbeat_interval_ms: int  # SUPERVISE_HEARTBEAT_INTERVAL_MS
    supervisor_timeout_ms: int  # SUPERVISE_SUPERVISOR_TIMEOUT_MS: silence after which the worker exits
    scheduled: bool  # SUPERVISE_MODE=runs: call the target once per "run" message, not once for good

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str]) -> WorkerEnv:
        try:
            return cls(
                endpoint=environ["SUPERVISE_WORKER_ENDPOINT"],
                worker_id=environ["SUPERVISE_WORKER_ID"],
                token=environ["SUPERVISE_TOKEN"],
                service=environ["SUPERVISE_SERVICE"],
                target=environ["SUPERVISE_TARGET"],
                parent_pid=int(environ["SUPERVISE_PPID"]),
                heartbeat_interval_ms=int(environ["SUPERVISE_HEARTBEAT_INTERVAL_MS"]),
                supervisor_timeout_ms=int(environ["SUPERVISE_SUPERVISOR_TIMEOUT_MS"]),
                scheduled=environ.get("SUPERVISE_MODE", "service") == "runs",
            )
        except (KeyError, ValueError) as e:
            raise SystemExit(
                f"supervise worker: missing or bad environment ({e}); "
                "workers are started by the supervisor, not by hand"
            ) from None


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM us when the supervisor dies, and catch the race where it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(EXIT_SUPERVISOR_GONE)


class Channel:
    """The worker's side of the worker channel, run by one I/O thread."""

    def __init__(self, env: WorkerEnv, ctx: JobContext) -> None:
        self._env = env
        self._ctx = ctx
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._zctx = zmq.Context()
        self._wake_recv = self._zctx.socket(zmq.PAIR)
        self._wake_recv.bind(f"inproc://wake-{id(self)}")
        self._wake_send = self._zctx.socket(zmq.PAIR)
        self._wake_send.connect(f"inproc://wake-{id(self)}")
        self._wake_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="supervise-channel", daemon=True)
        self._closed = threading.Event()
        self.supervisor_lost = threading.Event()
        self.on_run: Callable[[dict[str, object]], None] | None = None
        self.on_cancel: Callable[[str], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def send(self, kind: str, **fields: object) -> None:
        """Queue a message for the supervisor (from any thread)."""
        self._outbox.put(encode_worker_message(kind, token=self._env.token, **fields))
        self._wake()

    def close(self) -> None:
        """Flush queued messages (bounded by a linger) and stop the I/O thread."""
        self._outbox.put(None)
        self._wake()
        self._thread.join(timeout=_SEND_LINGER_MS / 1000 + 1)
        self._wake_send.close(linger=0)
        self._zctx.term()

    def _wake(self) -> None:
        with self._wake_lock:
            self._wake_send.send(b"", zmq.NOBLOCK)

    def _loop(self) -> None:
        env = self._env
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, env.worker_id.encode())
        sock.setsockopt(zmq.LINGER, _SEND_LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.connect(env.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_recv, zmq.POLLIN)
        heartbeat = encode_worker_message("heartbeat", token=env.token)
        watchdog = encode_worker_message("watchdog", token=env.token)
        interval_s = env.heartbeat_interval_ms / 1000
        next_beat = time.monotonic()
        last_heard = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_beat:
                    sock.send(heartbeat, zmq.NOBLOCK)
                    if self._ctx.take_watchdog():
                        sock.send(watchdog, zmq.NOBLOCK)
                    metrics = self._ctx.take_metrics()
                    if metrics is not None:
                        counters, gauges = metrics
                        sock.send(
                            encode_worker_message("metrics", token=env.token, counters=counters, gauges=gauges),
                            zmq.NOBLOCK,
                        )
                    next_beat = now + interval_s
                if (now - last_heard) * 1000 > env.supervisor_timeout_ms:
                    self._supervisor_gone(now - last_heard)
                    return
                events = dict(poller.poll(timeout=max(0.0, next_beat - time.monotonic()) * 1000))
                if self._wake_recv in events:
                    while self._wake_recv.poll(0):
                        self._wake_recv.recv()
                    if self._flush(sock):
                        return
                if sock in events:
                    while sock.poll(0):
                        last_heard = time.monotonic()
                        self._handle(sock.recv())
        except zmq.ZMQError:
            if not self._closed.is_set():
                raise
        finally:
            sock.close()
            self._wake_recv.close(linger=0)

    def _flush(self, sock: zmq.Socket[bytes]) -> bool:
        """Send what is queued; True when the closing sentinel was reached."""
        while True:
            try:
                frame = self._outbox.get_nowait()
            except queue.Empty:
                return False
            if frame is None:
                self._closed.set()
                return True
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass  # the supervisor is not reading; dropping beats blocking the worker

    def _handle(self, frame: bytes) -> None:
        try:
            msg = decode_worker_message(frame)
        except ProtocolError as e:
            print(f"supervise worker: ignoring a bad message from the supervisor: {e}", file=sys.stderr)
            return
        if msg.kind == "run" and self.on_run is not None:
            self.on_run(msg.fields)
        elif msg.kind == "cancel" and self.on_cancel is not None:
            self.on_cancel(str(msg.fields["run_id"]))
        elif msg.kind == "stop":
            self._ctx.cancel()
        elif msg.kind == "pause":
            self._ctx.pause()
        elif msg.kind == "resume":
            self._ctx.resume()

    def _supervisor_gone(self, silent_s: float) -> None:
        print(
            f"supervise worker {self._env.worker_id}: no word from the supervisor for {silent_s:.1f} s; exiting",
            file=sys.stderr,
            flush=True,
        )
        self.supervisor_lost.set()
        self._ctx.cancel()
        # Give the target a moment to return on its own, then leave regardless.
        threading.Timer(2.0, os._exit, args=(EXIT_SUPERVISOR_GONE,)).start()


def main() -> int:
    """Entry point of `python -m supervise.workers`; returns the process exit code."""
    env = WorkerEnv.from_environ(os.environ)
    die_with_parent(env.parent_pid)
    if os.environ.get("SUPERVISE_MODE") == "once":
        return run_once(env)
    ctx = JobContext(service=env.service, worker_id=env.worker_id)

    def on_term(signum: int, frame: FrameType | None) -> None:
        ctx.cancel()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    channel = Channel(env, ctx)
    channel.start()
    try:
        try:
            target = resolve_target(env.target)
        except BaseException as e:  # noqa: BLE001 - an import error of any kind is the target's failure
            return _report(channel, f"cannot load target {env.target}: {type(e).__name__}: {e}", e)
        if env.scheduled:
            try:
                runs = RunExecutor(env, ctx, channel, target)
            except BaseException as e:  # noqa: BLE001 - a failing setup() is the target's failure
                return _report(channel, f"setup failed: {type(e).__name__}: {e}", e)
            channel.on_run, channel.on_cancel = runs.start, runs.cancel
            channel.send("hello", pid=os.getpid())
            ctx.wait_cancelled()
            runs.close()
            return EXIT_SUPERVISOR_GONE if channel.supervisor_lost.is_set() else 0
        channel.send("hello", pid=os.getpid())
        try:
            call_target(target, ctx, {})
        except BaseException as e:  # noqa: BLE001 - reported, then the exit code tells the policy
            if isinstance(e, KeyboardInterrupt) and ctx.cancelled:
                return 0
            return _report(channel, f"{type(e).__name__}: {e}", e)
        return EXIT_SUPERVISOR_GONE if channel.supervisor_lost.is_set() else 0
    finally:
        channel.close()


class RunExecutor:
    """Runs of a scheduled service: each in its own thread, each with its own `RunContext`."""

    def __init__(self, env: WorkerEnv, ctx: JobContext, channel: Channel, target: Callable[..., object] | type) -> None:
        self._env = env
        self._ctx = ctx
        self._channel = channel
        self._service = target() if isinstance(target, type) and issubclass(target, Service) else None
        if self._service is not None:
            self._service.setup()  # once per worker; teardown() in close()
        self._target = self._service.run_once if self._service is not None else target
        self._runs: dict[str, tuple[RunContext, threading.Thread]] = {}
        self._lock = threading.Lock()

    def start(self, fields: dict[str, object]) -> None:
        """Called on the I/O thread for a "run" message; the run goes on its own thread."""
        run_id = str(fields["run_id"])
        run_ctx = RunContext(
            service=self._env.service,
            worker_id=self._env.worker_id,
            run_id=run_id,
            nominal_time=fields.get("nominal_time"),  # type: ignore[arg-type]
            attempt=int(fields.get("attempt") or 1),  # type: ignore[call-overload]
            report=self._channel.send,
        )
        args = dict(fields.get("args") or {})  # type: ignore[call-overload]
        thread = threading.Thread(target=self._execute, args=(run_ctx, args), name=f"run-{run_id[:8]}", daemon=True)
        with self._lock:
            self._runs[run_id] = (run_ctx, thread)
        thread.start()

    def _execute(self, run_ctx: RunContext, args: dict[str, object]) -> None:
        self._channel.send("run_started", run_id=run_ctx.run_id)
        try:
            result = call_target(self._target, run_ctx, args)  # type: ignore[arg-type]
            fields: dict[str, object] = {"ok": True, "result": _plain(result), "error": None, "traceback": None}
        except BaseException as e:  # noqa: BLE001 - a run's failure is reported, the worker lives on
            fields = {"ok": False, "result": None, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(fields["traceback"], file=sys.stderr, end="", flush=True)
        if run_ctx.cancelled and not fields["ok"]:
            fields["error"] = f"cancelled: {fields['error']}"
        self._channel.send("run_finished", run_id=run_ctx.run_id, **fields)
        with self._lock:
            self._runs.pop(run_ctx.run_id, None)

    def cancel(self, run_id: str) -> None:
        with self._lock:
            entry = self._runs.get(run_id)
        if entry is not None:
            entry[0].cancel()

    def close(self) -> None:
        """Cancel the runs in flight, wait for them, and tear the service down."""
        self.cancel_all_and_wait()
        if self._service is not None:
            self._service.teardown()

    def cancel_all_and_wait(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            entries = list(self._runs.values())
        for run_ctx, _ in entries:
            run_ctx.cancel()
        deadline = time.monotonic() + timeout_s
        for _, thread in entries:
            thread.join(max(0.0, deadline - time.monotonic()))


def _plain(value: object) -> object:
    """A run's result as the wire can carry it: msgpack-able, or its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def run_once(env: WorkerEnv) -> int:
    """isolation = "process": this process is one run; the exit code is its outcome."""
    ctx = RunContext(
        service=env.service,
        worker_id=env.worker_id,
        run_id=os.environ.get("SUPERVISE_RUN_ID", ""),
        nominal_time=os.environ.get("SUPERVISE_SCHEDULED_TIME") or None,
        attempt=int(os.environ.get("SUPERVISE_ATTEMPT", "1")),
        report=lambda *a, **k: None,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: ctx.cancel())
    args = json.loads(os.environ.get("SUPERVISE_RUN_ARGS") or "{}")
    try:
        target = resolve_target(env.target)
        service = target() if isinstance(target, type) and issubclass(target, Service) else None
        if service is not None:
            service.setup()
            try:
                service.run_once(ctx, **args)
            finally:
                service.teardown()
        else:
            call_target(target, ctx, args)  # type: ignore[arg-type]
    except BaseException as e:  # noqa: BLE001 - printed to the log; the exit code reports it
        traceback.print_exception(e, file=sys.stderr)
        return EXIT_TARGET_FAILED
    return 0


def _report(channel: Channel, message: str, error: BaseException) -> int:
    text = "".join(traceback.format_exception(error))
    print(text, file=sys.stderr, end="", flush=True)
    channel.send("error", message=message, traceback=text)
    if isinstance(error, SystemExit) and isinstance(error.code, int):
        return error.code
    return EXIT_TARGET_FAILED
