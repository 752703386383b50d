"""Per-service cgroups (v2): whether this supervisor may make them, and making them.

`cpu_quota` and `memory_max` need a cgroup v2 subtree delegated to the
supervisor: the unified hierarchy mounted at /sys/fs/cgroup, the supervisor's
own cgroup (from /proc/self/cgroup) writable, and the controller listed in its
`cgroup.controllers`. Under systemd that is `Delegate=yes` on the supervisor's
unit. Each service then gets `<own cgroup>/supervise-<service>/` with
`cpu.max` / `memory.max`, and its workers are moved there before they exec.

Where that is not so, `cgroup_problem` says exactly why, and the config key
asking for it is refused with that text.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Final

__all__ = ["CGROUP_ROOT", "CPU_PERIOD_US", "cgroup_problem", "own_cgroup", "prepare_service_cgroup"]

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
CPU_PERIOD_US: Final = 100_000  # cpu.max's period; the quota is a share of it


def own_cgroup() -> Path | None:
    """The supervisor's own cgroup v2 directory, or None when the machine is not on cgroup v2."""
    if not (CGROUP_ROOT / "cgroup.controllers").is_file():
        return None  # cgroup v1 or hybrid: v2 is not at the root
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    return None


@cache
def cgroup_problem(controller: str) -> str | None:
    """Why a per-service cgroup with `controller` ("cpu", "memory") cannot be made here; None if it can."""
    own = own_cgroup()
    if own is None:
        return (
            f"needs cgroup v2 (the unified hierarchy at {CGROUP_ROOT}); this machine mounts cgroup v1 or a hybrid, "
            "so the limit cannot be enforced: remove the key, or run on a cgroup v2 system"
        )
    if not os.access(own, os.W_OK):
        return (
            f"needs a cgroup v2 subtree delegated to supervise; its cgroup {own} is not writable "
            "(under systemd set Delegate=yes on supervise's unit)"
        )
    try:
        controllers = (own / "cgroup.controllers").read_text().split()
    except OSError as e:
        return f"cannot read {own / 'cgroup.controllers'}: {e.strerror}"
    if controller not in controllers:
        return (
            f'the "{controller}" controller is not delegated to supervise\'s cgroup {own} '
            f"(it has: {' '.join(controllers) or 'none'}; under systemd set Delegate=yes)"
        )
    return None


def prepare_service_cgroup(service: str, *, cpu_quota_percent: int | None, memory_max_bytes: int | None) -> Path:
    """Create (or reuse) the service's cgroup with its limits; its `cgroup.procs` path, for the launcher.

    cgroup v2's "no internal processes" rule: controllers are enabled for the
    children of a cgroup that holds no process, so the supervisor first moves
    itself into a `supervisor/` leaf of its own cgroup.
    """
    own = own_cgroup()
    assert own is not None  # the config was refused otherwise
    leaf = own / "supervisor"
    if not leaf.is_dir():
        leaf.mkdir()
        for pid in (own / "cgroup.procs").read_text().split():
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # a process that exited meanwhile
    wanted = [c for c, on in (("cpu", cpu_quota_percent), ("memory", memory_max_bytes)) if on is not None]
    (own / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    group = own / f"supervise-{service.replace(':', '-')}"
    group.mkdir(exist_ok=True)
    if cpu_quota_percent is not None:
        (group / "cpu.max").write_text(f"{cpu_quota_percent * CPU_PERIOD_US // 100} {CPU_PERIOD_US}")
    if memory_max_bytes is not None:
        (group / "memory.max").write_text(str(memory_max_bytes))
    return group / "cgroup.procs"
