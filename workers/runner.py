"""The worker process: connect back to the supervisor, say hello, heartbeat, run the target.

The supervisor starts `python -m supervise.workers` with the worker's identity in
its environment (see `WorkerEnv`). One I/O thread owns the DEALER socket: it
sends heartbeats, forwards what the other threads queue, and turns stop, pause and
resume messages into the `JobContext`. The main thread runs the target; a
scheduled service's runs go to a bounded `RunExecutor` (workers/executor.py); in cluster mode
the worker also enforces each run's lease deadline itself (workers/lease.py).
"""

from __future__ import annotations

import collections
import ctypes
import gc
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

from supervise.protocol import worker_env as E
from supervise.protocol.codec import decode_worker_message, encode_worker_message
from supervise.protocol.errors import ProtocolError
from supervise.workers.context import JobContext, RunContext
from supervise.workers.executor import RunExecutor, concurrency_from_env
from supervise.workers.lease import RunLeases
from supervise.workers.service import Service
from supervise.workers.target import call_target, resolve_target

_PR_SET_PDEATHSIG = 1
EXIT_TARGET_FAILED = 1
EXIT_BAD_ENVIRONMENT = 2
EXIT_SUPERVISOR_GONE = 3
_SEND_LINGER_MS = 2000
_SNDHWM = 10_000
_FLUSH_PER_TURN = 256  # messages sent between two looks at the heartbeat clock
_NOBLOCK = int(zmq.NOBLOCK)


def _drain_wakeups(sock: zmq.Socket[bytes]) -> None:
    """Read every wake-up waiting in the PAIR pipe (they carry nothing)."""
    while True:
        try:
            sock.recv(_NOBLOCK)
        except zmq.Again:
            return


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
                endpoint=environ[E.WORKER_ENDPOINT],
                worker_id=environ[E.WORKER_ID],
                token=environ[E.TOKEN],
                service=environ[E.SERVICE],
                target=environ[E.TARGET],
                parent_pid=int(environ[E.PPID]),
                heartbeat_interval_ms=int(environ[E.HEARTBEAT_INTERVAL_MS]),
                supervisor_timeout_ms=int(environ[E.SUPERVISOR_TIMEOUT_MS]),
                scheduled=environ.get(E.MODE, "service") == E.MODE_RUNS,
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
    """The worker's side of the worker channel, run by one I/O thread.

    The I/O thread sends the heartbeat on time whatever the run traffic: it
    sends at most `_FLUSH_PER_TURN` queued messages between two looks at the
    clock, and a message the socket cannot take now (the supervisor is slow to
    read) waits here, in order, instead of being dropped or raising. `send`
    never blocks and never raises into a run.
    """

    def __init__(self, env: WorkerEnv, ctx: JobContext) -> None:
        self._env = env
        self._ctx = ctx
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._unsent: collections.deque[bytes] = (
            collections.deque()
        )  # taken from the outbox, not yet accepted by the socket
        self._zctx = zmq.Context()
        self._wake_recv = self._zctx.socket(zmq.PAIR)
        self._wake_recv.bind(f"inproc://wake-{id(self)}")
        self._wake_send = self._zctx.socket(zmq.PAIR)
        self._wake_send.connect(f"inproc://wake-{id(self)}")
        self._wake_lock = threading.Lock()
        self._wake_pending = False  # one wake-up in the pipe at most: it cannot overflow
        self._thread = threading.Thread(target=self._loop, name="supervise-channel", daemon=True)
        self._closed = threading.Event()
        self._closing = False
        self.supervisor_lost = threading.Event()
        self.on_run: Callable[[dict[str, object]], None] | None = None
        self.on_cancel: Callable[[str], None] | None = None
        self.on_lease: Callable[[dict[str, float]], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def send(self, kind: str, **fields: object) -> None:
        """Queue a message for the supervisor (from any thread)."""
        self._outbox.put(encode_worker_message(kind, token=self._env.token, **fields))
        self._wake()

    def close(self) -> None:
        """Flush queued messages (bounded by a linger) and stop the I/O thread."""
        self._outbox.put(None)
        self._wake(force=True)
        self._thread.join(timeout=_SEND_LINGER_MS / 1000 + 1)
        with self._wake_lock:
            self._closing = True
            self._wake_send.close(linger=0)
        self._zctx.term()

    def _wake(self, *, force: bool = False) -> None:
        with self._wake_lock:
            if self._closing or (self._wake_pending and not force):
                return
            self._wake_pending = True
            try:
                self._wake_send.send(b"", _NOBLOCK)
            except zmq.ZMQError:
                pass  # a wake-up already waits in the pipe; the I/O thread also looks every heartbeat

    def _loop(self) -> None:
        try:
            self._serve()
        except Exception:  # noqa: BLE001 - the channel is the worker's lifeline: say why it died, then exit
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(EXIT_SUPERVISOR_GONE)

    def _serve(self) -> None:
        env = self._env
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, env.worker_id.encode())
        sock.setsockopt(zmq.LINGER, _SEND_LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, _SNDHWM)
        sock.connect(env.endpoint)
        poller = zmq.Poller()
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
                    self._beat(sock, heartbeat, watchdog)
                    next_beat = now + interval_s
                if (now - last_heard) * 1000 > env.supervisor_timeout_ms:
                    self._supervisor_gone(now - last_heard)
                    return
                # POLLOUT only while something waits for room, or poll would return at once forever.
                poller.register(sock, zmq.POLLIN | (zmq.POLLOUT if self._unsent else 0))
                backlog = bool(self._unsent) or self._wake_pending
                timeout_ms = 0 if backlog and not self._unsent else int(max(0.0, next_beat - time.monotonic()) * 1000)
                events = dict(poller.poll(timeout=timeout_ms))
                if self._wake_recv in events:
                    _drain_wakeups(self._wake_recv)
                if self._flush(sock):
                    return
                if events.get(sock, 0) & zmq.POLLIN:
                    # Receive until Again (not `sock.poll(0)` before each message: it builds a
                    # Poller every call, a run message's largest cost on this thread).
                    for _ in range(_FLUSH_PER_TURN):
                        try:
                            frame = sock.recv(_NOBLOCK)
                        except zmq.Again:
                            break
                        last_heard = time.monotonic()
                        self._handle(frame)
        except zmq.ZMQError:
            if not self._closed.is_set():
                raise
        finally:
            sock.close()
            self._wake_recv.close(linger=0)

    def _beat(self, sock: zmq.Socket[bytes], heartbeat: bytes, watchdog: bytes) -> None:
        """Heartbeat, watchdog and metrics: dropped (not queued) when the socket is full, being periodic."""
        frames = [heartbeat]
        if self._ctx.take_watchdog():
            frames.append(watchdog)
        metrics = self._ctx.take_metrics()
        if metrics is not None:
            counters, gauges = metrics
            frames.append(encode_worker_message("metrics", token=self._env.token, counters=counters, gauges=gauges))
        for frame in frames:
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return

    def _flush(self, sock: zmq.Socket[bytes]) -> bool:
        """Send up to `_FLUSH_PER_TURN` queued messages, in order; True when the closing sentinel was reached."""
        with self._wake_lock:
            self._wake_pending = False  # anything queued after this point wakes us again
        for _ in range(_FLUSH_PER_TURN):
            if not self._unsent:
                try:
                    frame = self._outbox.get_nowait()
                except queue.Empty:
                    return False
                if frame is None:
                    return self._drain_at_close(sock)
                self._unsent.append(frame)
            try:
                sock.send(self._unsent[0], _NOBLOCK)
            except zmq.Again:
                return False  # the supervisor is not reading now; kept, sent when there is room
            self._unsent.popleft()
        with self._wake_lock:
            self._wake_pending = True  # more may be waiting: poll without sleeping
        return False

    def _drain_at_close(self, sock: zmq.Socket[bytes]) -> bool:
        self._closed.set()
        deadline = time.monotonic() + _SEND_LINGER_MS / 1000
        while self._unsent and time.monotonic() < deadline:
            if sock.poll(50, zmq.POLLOUT):
                sock.send(self._unsent.popleft(), zmq.NOBLOCK)
        return True

    def _handle(self, frame: bytes) -> None:
        try:
            msg = decode_worker_message(frame)
        except ProtocolError as e:
            print(f"supervise worker: ignoring a bad message from the supervisor: {e}", file=sys.stderr)
            return
        try:
            if msg.kind == "run" and self.on_run is not None:
                self.on_run(msg.fields)
            elif msg.kind == "cancel" and self.on_cancel is not None:
                self.on_cancel(str(msg.fields["run_id"]))
            elif msg.kind == "lease" and self.on_lease is not None:
                self.on_lease({str(k): float(v) for k, v in dict(msg.fields["runs"]).items()})  # type: ignore[call-overload]
            elif msg.kind == "stop":
                self._ctx.cancel()
            elif msg.kind == "pause":
                self._ctx.pause()
            elif msg.kind == "resume":
                self._ctx.resume()
        except Exception:  # noqa: BLE001 - one bad message must not end the channel
            print(f"supervise worker: could not handle a {msg.kind!r} message:", file=sys.stderr)
            traceback.print_exc()

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


def _freeze_loaded_objects() -> None:
    """Move what loading the target made (modules, the http client's classes and tables) out
    of the cyclic collector's view: it stays for the worker's life, and a full collection
    would otherwise walk all of it again and again while runs are in flight (15 to 40 ms a
    pass under an http burst, every run waiting). No collection first: it would delay the
    worker's `hello` by as much, and what it could free is a few import-time cycles."""
    gc.freeze()


def main() -> int:
    """Entry point of `python -m supervise.workers`; returns the process exit code."""
    env = WorkerEnv.from_environ(os.environ)
    die_with_parent(env.parent_pid)
    if os.environ.get(E.MODE) == E.MODE_ONCE:
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
                runs = RunExecutor(
                    service=env.service,
                    worker_id=env.worker_id,
                    channel=channel,
                    target=target,
                    concurrency=concurrency_from_env(os.environ),
                )
            except BaseException as e:  # noqa: BLE001 - a failing setup() is the target's failure
                return _report(channel, f"setup failed: {type(e).__name__}: {e}", e)
            leases = RunLeases(cancel=runs.expire, running=runs.has)
            channel.on_run, channel.on_cancel = _leased(runs.start, leases), runs.cancel
            channel.on_lease = leases.renew
            _freeze_loaded_objects()
            channel.send("hello", pid=os.getpid())
            ctx.wait_cancelled()
            leases.close()
            runs.close()
            return EXIT_SUPERVISOR_GONE if channel.supervisor_lost.is_set() else 0
        _freeze_loaded_objects()
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


def run_once(env: WorkerEnv) -> int:
    """isolation = "process": this process is one run; the exit code is its outcome."""
    ctx = RunContext(
        service=env.service,
        worker_id=env.worker_id,
        run_id=os.environ.get(E.RUN_ID, ""),
        nominal_time=os.environ.get(E.SCHEDULED_TIME) or None,
        attempt=int(os.environ.get(E.ATTEMPT, "1")),
        report=lambda *a, **k: None,
        key=os.environ.get("SUPERVISE_IDEMPOTENCY_KEY") or None,
        epoch=int(os.environ[E.EPOCH]) if os.environ.get(E.EPOCH, "").isdigit() else None,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: ctx.cancel())
    args = json.loads(os.environ.get(E.RUN_ARGS) or "{}")
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
            call_target(target, ctx, args)
    except BaseException as e:  # noqa: BLE001 - printed to the log; the exit code reports it
        traceback.print_exception(e, file=sys.stderr)
        return EXIT_TARGET_FAILED
    return 0


def _leased(start: Callable[[dict[str, object]], None], leases: RunLeases) -> Callable[[dict[str, object]], None]:
    """A "run" handler that also hands a cluster run's lease deadline to `leases`."""

    def on_run(fields: dict[str, object]) -> None:
        start(fields)
        until = fields.get("lease_until")
        if isinstance(until, (int, float)):
            grace = fields.get("lease_grace_ms")
            leases.grant(str(fields["run_id"]), float(until), float(grace) if isinstance(grace, (int, float)) else 0.0)

    return on_run


def _report(channel: Channel, message: str, error: BaseException) -> int:
    text = "".join(traceback.format_exception(error))
    print(text, file=sys.stderr, end="", flush=True)
    channel.send("error", message=message, traceback=text)
    if isinstance(error, SystemExit) and isinstance(error.code, int):
        return error.code
    return EXIT_TARGET_FAILED
