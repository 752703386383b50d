"""Worker processes: spawn, exit notification through pidfds, and signals to the group.

Every worker runs in its own session (so its own process group, pgid = pid), with
`close_fds`, stdin from /dev/null and stdout+stderr on one pipe drained by a
`PipeReader`. Exits are noticed at once: a pidfd becomes readable when the process
dies, and the event loop is watching it. No polling, no SIGCHLD handler, no
`preexec_fn` (pyzmq runs threads, and `preexec_fn` is unsafe with threads).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess  # nosec B404 # workers are started from argv lists, never through a shell
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervise.supervisor.daemon.account import Account
from supervise.supervisor.daemon.descriptors import restore_worker_limit
from supervise.supervisor.daemon.launch import Identity, Launch, wrapped_argv
from supervise.supervisor.daemon.output import PipeReader, RotatingLog


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    user: str | None
    umask: int | None
    identity: Identity | None = None  # group / supplementary_groups beyond `user`'s own
    launch: Launch | None = None  # rlimits, nice, cgroup, sockets: set up by the exec wrapper


class Worker:
    """One running worker process, owned by the event loop that spawned it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        pipe_fd: int,
        log: RotatingLog,
        on_exit: Callable[[Worker, int | None, int | None], None],
    ) -> None:
        """`pipe_fd`: the read end of the worker's stdout and stderr, now this worker's to close."""
        self.pid = popen.pid
        self._loop = loop
        self._popen = popen
        self._on_exit = on_exit
        self.exited = False
        self._pidfd: int | None = None
        self.output = PipeReader(loop, pipe_fd, log)
        self._pidfd = os.pidfd_open(self.pid)
        loop.add_reader(self._pidfd, self._pidfd_readable)

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the worker's whole process group.

        The worker is not reaped before `_pidfd_readable` runs, so its pid (and
        so the pgid) cannot have been reused while this object can signal it.
        """
        if self.exited:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            # The leader changed its process group (setpgid); reach it through its pidfd.
            assert self._pidfd is not None
            signal.pidfd_send_signal(self._pidfd, sig)

    def _pidfd_readable(self) -> None:
        # The leader is a zombie now; its process group id is still reserved, so this
        # kill reaches exactly the grandchildren it left behind.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        _, status = os.waitpid(self.pid, 0)
        self.exited = True
        code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = code  # we reaped it; Popen must not try again
        self.output.drain()
        if code < 0:
            self._on_exit(self, None, -code)
        else:
            self._on_exit(self, code, None)


def spawn(
    loop: asyncio.AbstractEventLoop,
    request: SpawnRequest,
    log: RotatingLog,
    on_exit: Callable[[Worker, int | None, int | None], None],
) -> Worker:
    """Start a worker; raises OSError (with errno) when the OS cannot run it.

    With `request.user` the worker also gets that user's primary and supplementary
    groups (as root; a user's own worker keeps the groups it has); `request.identity`
    overrides them. With `request.launch` the worker starts through the exec wrapper.
    """
    identity = request.identity
    if identity is None and request.user is not None:
        account = Account.lookup(request.user)
        if account.switch_needed():
            identity = Identity(request.user, account.uid, account.gid, account.groups)
    identity = identity or Identity()
    argv, pass_fds = list(request.argv), tuple[int, ...]()
    if request.launch is not None and request.launch.needed():
        # The wrapper switches identity itself, after the settings that need root.
        argv = wrapped_argv(request.launch, identity, argv, request.env, request.cwd)
        pass_fds, identity = request.launch.listen_fds, Identity()
    # The output pipe is made here rather than by Popen (stdout=PIPE), which would wrap its end
    # in a buffered file object that the event loop cannot use.
    read_fd, write_fd = os.pipe()
    try:
        popen = subprocess.Popen(  # nosec B603 # running the operator's configured command is this module's purpose; no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=subprocess.STDOUT,
            close_fds=True,
            pass_fds=pass_fds,
            start_new_session=True,
            cwd=request.cwd,
            env=dict(request.env),
            user=identity.uid,
            group=identity.gid,
            extra_groups=None if identity.groups is None else list(identity.groups),
            umask=-1 if request.umask is None else request.umask,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    restore_worker_limit(popen.pid)
    return Worker(loop, popen, read_fd, log, on_exit)


def describe_spawn_error(error: OSError, argv: Sequence[str], cwd: Path) -> str:
    """An exec failure as a user reads it: errno name, what failed, what to check."""
    name = errno.errorcode.get(error.errno or 0, "E?")
    if isinstance(error, FileNotFoundError) and not cwd.is_dir():
        return f"{name}: working directory {cwd} does not exist"
    if isinstance(error, FileNotFoundError) and "/" in argv[0]:
        path = cwd / argv[0]  # as exec saw it
        shown = argv[0] if path == Path(argv[0]) else f"{argv[0]} ({path})"
        return f"{name}: No such file or directory: {shown}"
    if isinstance(error, FileNotFoundError):
        return f"{name}: No such file or directory: {argv[0]} not found (PATH={os.environ.get('PATH', '')})"
    if isinstance(error, PermissionError):
        return f"{name}: {argv[0]} is not executable (check its mode and the cwd's)"
    return f"{name}: {error.strerror or error} while starting {argv[0]}"


def python_worker_argv() -> list[str]:
    return [sys.executable, "-m", "supervise.workers"]
