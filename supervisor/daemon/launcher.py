"""The exec wrapper: what must happen in the worker process itself, between fork and exec.

The supervisor cannot use `preexec_fn` (pyzmq runs threads), so a worker that
needs more than `subprocess.Popen` offers is started as
`python -I -S launcher.py SPEC -- ARGV...`. This script, standard library only,
then in order:

1. joins the service's cgroup (writes its pid to `cgroup.procs`),
2. sets `rlimits` (soft = hard), `nice` and `oom_score_adjust` while still root,
3. switches to the service's groups and user,
4. moves the inherited listening sockets to fds 3, 4, ... and sets `LISTEN_FDS`,
   `LISTEN_FDNAMES` and `LISTEN_PID` (its own pid, which exec keeps),
5. execs ARGV, so the worker keeps this process's pid.

A failure is printed to stderr (the service's log) and exits 127 (exec failed) or
126 (a setting was refused), before the program ever runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import sys
from typing import Any

EXIT_EXEC_FAILED = 127
EXIT_SETUP_FAILED = 126


def _apply_limits(spec: dict[str, Any]) -> None:
    if spec.get("cgroup_procs"):
        with open(spec["cgroup_procs"], "w") as f:
            f.write(str(os.getpid()))
    for number, limit in spec.get("rlimits", []):
        value = resource.RLIM_INFINITY if limit < 0 else limit
        resource.setrlimit(number, (value, value))
    if spec.get("nice") is not None:
        os.setpriority(os.PRIO_PROCESS, 0, spec["nice"])
    if spec.get("oom_score_adjust") is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(spec["oom_score_adjust"]))


def _switch_identity(spec: dict[str, Any]) -> None:
    if spec.get("groups") is not None:
        os.setgroups(spec["groups"])
    if spec.get("gid") is not None:
        os.setgid(spec["gid"])
    if spec.get("uid") is not None:
        os.setuid(spec["uid"])


def _place_sockets(fds: list[int], names: list[str]) -> None:
    """Put `fds` at 3, 4, ... (inheritable), whatever numbers they have now."""
    first_free = 3 + len(fds)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first_free) for fd in fds]
    for fd in fds:
        os.close(fd)
    for index, fd in enumerate(moved):
        os.dup2(fd, 3 + index, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_FDNAMES"] = ":".join(names)
    os.environ["LISTEN_PID"] = str(os.getpid())


def main(args: list[str]) -> int:
    spec: dict[str, Any] = json.loads(args[0])
    argv = args[2:]  # args[1] is "--"
    try:
        _apply_limits(spec)
        _switch_identity(spec)
        if spec.get("listen_fds"):
            _place_sockets(spec["listen_fds"], spec["listen_names"])
    except OSError as e:
        print(f"supervise: cannot set up the worker: {e}", file=sys.stderr, flush=True)
        return EXIT_SETUP_FAILED
    try:
        os.execvp(argv[0], argv)  # nosec B606 # argv is the service's own command from its config; no shell is involved
    except OSError as e:
        print(f"supervise: cannot run {argv[0]}: {e}", file=sys.stderr, flush=True)
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
