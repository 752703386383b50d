"""A service as the shell holds it: `ServiceRuntime`, its instance name and its core spec.

Also which config fields a change of takes a restart (`PROCESS_FIELDS`) and which
take effect at once (`POLICY_FIELDS`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from supervise.supervisor.config.loader import ServiceConfig
from supervise.supervisor.core import state as core
from supervise.supervisor.core.restart import ExitRules, RestartPolicy
from supervise.supervisor.daemon.output import RotatingLog
from supervise.supervisor.daemon.processes import Worker

SUPERVISOR_TIMEOUT_MIN_MS = 15_000


def supervisor_timeout_ms(cfg: ServiceConfig) -> int:
    """How long a Python worker waits without word from the supervisor before it exits.

    The backstop to PR_SET_PDEATHSIG, so generous: a supervisor busy starting 200
    interpreters on two cores must not look dead to its own workers.
    """
    return max(3 * cfg.heartbeat_timeout_ms, SUPERVISOR_TIMEOUT_MIN_MS)


def instance_name(service: str, instance: int) -> str:
    """`web` for instance 0, `web:1`, `web:2` ... for the others (see `processes`)."""
    return service if instance == 0 else f"{service}:{instance}"


PROCESS_FIELDS = frozenset(
    {"command", "target", "env", "cwd", "user", "umask", "schedule", "heartbeat_interval_ms", "sd_notify"}
    | {"rlimits", "nice", "oom_score_adjust", "group", "supplementary_groups", "cpu_quota_percent", "memory_max_bytes"}
    | {"sockets"}
)
"""Settings baked into a worker at spawn: changing one restarts the service."""
POLICY_FIELDS = frozenset(
    {
        "critical",
        "autostart",
        "watchdog_timeout_ms",
        "restart",
        "max_restarts",
        "restart_window_ms",
        "backoff_ms",
        "backoff_max_ms",
        "stable_after_ms",
        "start_timeout_ms",
        "heartbeat_timeout_ms",
        "stop_signal",
        "stop_timeout_ms",
        "hang_signal",
        "success_exit_codes",
        "restart_prevent_exit_codes",
        "restart_force_exit_codes",
        "max_memory_bytes",
        "requires",
        "before_start",
        "after_start",
        "before_stop",
        "after_stop",
        "on_fatal",
        "hook_timeout_ms",
    }
)
"""Settings the supervisor reads when it decides: changing one takes effect without a restart."""


def service_spec(cfg: ServiceConfig) -> core.ServiceSpec:
    """The part of a service's config the state machine decides with."""
    return core.ServiceSpec(
        restart=str(cfg.restart),
        policy=RestartPolicy(
            max_restarts=cfg.max_restarts,
            window_ms=cfg.restart_window_ms,
            backoff_ms=cfg.backoff_ms,
            backoff_max_ms=cfg.backoff_max_ms,
            stable_after_ms=cfg.stable_after_ms,
        ),
        python=cfg.is_python,
        start_timeout_ms=cfg.start_timeout_ms,
        heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
        stop_signal=int(cfg.stop_signal),
        stop_timeout_ms=cfg.stop_timeout_ms,
        watchdog_timeout_ms=cfg.watchdog_timeout_ms,
        hang_signal=int(cfg.hang_signal),
        notify=cfg.sd_notify,
        exit_rules=ExitRules(cfg.success_exit_codes, cfg.restart_prevent_exit_codes, cfg.restart_force_exit_codes),
    )


@dataclass
class ServiceRuntime:
    """The shell's side of one service: its config, core record, worker and timers."""

    config: ServiceConfig
    spec: core.ServiceSpec
    record: core.Service = field(default_factory=core.Service)
    worker: Worker | None = None
    token: str = ""
    worker_id: str = ""
    log: RotatingLog | None = None
    timers: dict[core.Timer, asyncio.TimerHandle] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    instance: int = 0  # which of the service's `processes` this is; instance 0 carries the plain name
    worker_id_bytes: bytes = b""  # the current worker's routing identity
    heartbeat_frame: bytes = b""  # the exact bytes of the current worker's heartbeat
    name: str = field(init=False)  # `instance_name(config.name, instance)`: a config update keeps the name

    def __post_init__(self) -> None:
        self.name = instance_name(self.config.name, self.instance)


def runs_per_process(cfg: ServiceConfig) -> bool:
    """A scheduled command (or isolation = "process") has no warm worker: each run is one process."""
    return cfg.schedule is not None and (not cfg.is_python or cfg.schedule.isolation == "process")
