"""The parent's side of the exec wrapper (launcher.py): what a worker needs set up, and its argv.

`Launch` gathers what `subprocess.Popen` cannot do without `preexec_fn`:
rlimits, nice, oom_score_adjust, a cgroup, listening sockets at fds 3... with
`LISTEN_PID` naming the worker itself. When a service asks for none of these,
no wrapper runs and the worker is exec'd directly.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervise.supervisor.config.limits import RLIMITS
from supervise.supervisor.config.model import ServiceConfig
from supervise.supervisor.daemon.account import Account

__all__ = ["Identity", "Launch", "identity_for", "launch_for", "wrapped_argv"]

LAUNCHER = Path(__file__).with_name("launcher.py")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the worker runs as; None fields keep the supervisor's."""

    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    """What the exec wrapper sets up in the worker before exec."""

    rlimits: tuple[tuple[int, int], ...] = ()  # (resource.RLIMIT_*, limit; -1 = infinity)
    nice: int | None = None
    oom_score_adjust: int | None = None
    cgroup_procs: str | None = None  # the service cgroup's cgroup.procs
    listen_fds: tuple[int, ...] = ()  # open in the supervisor; become 3, 4, ...
    listen_names: tuple[str, ...] = ()

    def needed(self) -> bool:
        """True when the worker cannot be exec'd directly."""
        return bool(
            self.rlimits
            or self.nice is not None
            or self.oom_score_adjust is not None
            or self.cgroup_procs
            or self.listen_fds
        )


def identity_for(cfg: ServiceConfig) -> Identity:
    """The uid, primary group and supplementary groups `cfg` asks for (as root; as itself, only what it can)."""
    user, uid, gid, groups = cfg.user, None, None, None
    if cfg.user is not None:
        account = Account.lookup(cfg.user)
        if account.switch_needed():
            uid, gid, groups = account.uid, account.gid, account.groups
    if cfg.group is not None:
        gid = grp.getgrnam(cfg.group).gr_gid
    if cfg.supplementary_groups is not None:
        groups = tuple(grp.getgrnam(name).gr_gid for name in cfg.supplementary_groups)
    return Identity(user, uid, gid, groups)


def launch_for(cfg: ServiceConfig, *, cgroup_procs: Path | None, sockets: Sequence[tuple[str, int]]) -> Launch:
    """The wrapper's settings for one worker of `cfg`, with its cgroup and (name, fd) sockets."""
    return Launch(
        rlimits=tuple((RLIMITS[name], limit) for name, limit in cfg.rlimits.items()),
        nice=cfg.nice,
        oom_score_adjust=cfg.oom_score_adjust,
        cgroup_procs=None if cgroup_procs is None else str(cgroup_procs),
        listen_fds=tuple(fd for _, fd in sockets),
        listen_names=tuple(name for name, _ in sockets),
    )


def wrapped_argv(
    launch: Launch, identity: Identity, argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> list[str]:
    """`python launcher.py SPEC -- ARGV`; raises FileNotFoundError when ARGV's program is missing.

    The check keeps a missing executable a spawn failure (as a direct exec's
    ENOENT is), not an exit 127 of the wrapper.
    """
    program = argv[0]
    if "/" in program:
        found = os.access(cwd / program, os.X_OK)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
    if not found:
        raise FileNotFoundError(2, "No such file or directory", program)
    spec = {
        "rlimits": launch.rlimits,
        "nice": launch.nice,
        "oom_score_adjust": launch.oom_score_adjust,
        "cgroup_procs": launch.cgroup_procs,
        "listen_fds": launch.listen_fds,
        "listen_names": launch.listen_names,
        "uid": identity.uid,
        "gid": identity.gid,
        "groups": identity.groups,
    }
    return [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec), "--", *argv]
