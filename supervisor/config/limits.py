"""Keys that limit a worker or set its identity: rlimits, nice, oom_score_adjust, group, cgroup limits.

Each converter takes the TOML value (and the key table's context, unused here)
and returns the field's value or raises `ValueError` with the problem shown to
the user. Whether the machine can enforce `cpu_quota` / `memory_max` (cgroup v2
delegated to the supervisor) is checked here too, so a config that asks for
them where they cannot work is refused naming the key, not silently ignored.
"""

from __future__ import annotations

import grp
import resource
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from supervise.supervisor.cgroups import cgroup_problem
from supervise.supervisor.core.units import parse_size_bytes, show_value, type_name

__all__ = [
    "RLIMITS",
    "convert_cpu_quota",
    "convert_group",
    "convert_memory_max",
    "convert_nice",
    "convert_oom_score_adjust",
    "convert_rlimits",
    "convert_supplementary_groups",
]

# rlimits names as systemd's Limit*= and prlimit(1) spell them, to resource.RLIMIT_* numbers.
_NAMES = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue",
    "nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
RLIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {name: getattr(resource, key) for name in _NAMES if hasattr(resource, key := f"RLIMIT_{name.upper()}")}
)
INFINITY: Final = -1  # resource.RLIM_INFINITY, as the launcher passes it on


def _int_in(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"expected an integer from {low} to {high}, got {show_value(value)}")
    return value


def convert_rlimits(value: object, ctx: object) -> Mapping[str, int]:
    """`rlimits = { nofile = 4096, core = 0 }`: soft = hard limit per resource; "infinity" lifts one."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table like {{ nofile = 4096, core = 0 }}, got {type_name(value)}")
    limits: dict[str, int] = {}
    for name, limit in value.items():
        if name not in RLIMITS:
            raise ValueError(f'unknown resource "{name}" (known: {", ".join(RLIMITS)})')
        if limit == "infinity":
            limits[name] = INFINITY
        elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f'{name}: expected an integer >= 0 or "infinity", got {show_value(limit)}')
        else:
            limits[name] = limit
    return MappingProxyType(limits)


def convert_nice(value: object, ctx: object) -> int:
    """`nice`: -20 (first served) to 19 (last); below 0 needs root."""
    return _int_in(value, -20, 19)


def convert_oom_score_adjust(value: object, ctx: object) -> int:
    """`oom_score_adjust`: -1000 (never chosen by the OOM killer) to 1000 (chosen first)."""
    return _int_in(value, -1000, 1000)


def _group_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a group name, got {show_value(value)}")
    try:
        grp.getgrnam(value)
    except KeyError:
        raise ValueError(f'unknown group "{value}"') from None
    return value


def convert_group(value: object, ctx: object) -> str:
    """`group`: the worker's primary group (instead of the user's)."""
    return _group_name(value)


def convert_supplementary_groups(value: object, ctx: object) -> tuple[str, ...]:
    """`supplementary_groups = ["adm", "video"]`: the worker's other groups (instead of the user's)."""
    if not isinstance(value, list):
        raise ValueError(f'expected a list of group names like ["adm"], got {show_value(value)}')
    return tuple(_group_name(item) for item in value)


def convert_cpu_quota(value: object, ctx: object) -> int:
    """`cpu_quota = "150%"`: CPU time per wall time, in percent of one CPU (systemd's CPUQuota=)."""
    text = value.strip() if isinstance(value, str) else ""
    if not text.endswith("%") or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise ValueError(f'expected a percentage of one CPU like "50%" or "200%", got {show_value(value)}')
    _require_cgroup("cpu")
    return int(text[:-1])


def convert_memory_max(value: object, ctx: object) -> int:
    """`memory_max = "512MiB"`: the kernel's hard memory limit for the service's cgroup."""
    size: int = parse_size_bytes(value)
    if size == 0:
        raise ValueError(f"expected a size > 0, got {show_value(value)}")
    _require_cgroup("memory")
    return size


def _require_cgroup(controller: str) -> None:
    problem = cgroup_problem(controller)
    if problem is not None:
        raise ValueError(problem)
