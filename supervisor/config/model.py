"""What a config is once validated: frozen `Config`, `SupervisorConfig` and `ServiceConfig`.

Parsing TOML into these is loader.py; the keys and their converters are keys.py.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from supervise.supervisor.config.cluster import ClusterConfig
from supervise.supervisor.config.keys import RestartMode
from supervise.supervisor.config.notify import NotifyConfig, NotifyRule
from supervise.supervisor.config.schedule import ScheduleConfig
from supervise.supervisor.core.errors import ConfigProblem
from supervise.supervisor.core.restart import NO_EXIT_STATUSES, ExitStatuses

__all__ = ["START_TIMEOUT_COMMAND_MS", "START_TIMEOUT_TARGET_MS", "Config", "ServiceConfig", "SupervisorConfig"]

START_TIMEOUT_COMMAND_MS: Final = 1_000  # a command must stay up this long to count as started
START_TIMEOUT_TARGET_MS: Final = 30_000  # a Python target must say hello within this


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """One service, validated. Build it with `parse_service`, or `for_command` / `for_target`."""

    name: str
    command: tuple[str, ...] | None  # argv of an executable; or
    target: str | None  # "pkg.mod:func" or "pkg.mod:ServiceClass", run by the worker runner
    critical: bool = False  # giving up on it stops the supervisor (exit 70)
    autostart: bool = True
    restart: RestartMode = RestartMode.ON_FAILURE
    max_restarts: int = 5  # within restart_window_ms; 0: the first failure is final
    restart_window_ms: int = 60_000
    backoff_ms: int = 1_000  # first delay of an unstable worker; doubles up to backoff_max_ms
    backoff_max_ms: int = 60_000
    stable_after_ms: int = 60_000  # a run this long is stable: restart at once, failures reset
    start_timeout_ms: int  # START_TIMEOUT_COMMAND_MS or START_TIMEOUT_TARGET_MS by default
    heartbeat_interval_ms: int = 2_000
    heartbeat_timeout_ms: int = 10_000  # > heartbeat_interval_ms
    stop_signal: int = signal.SIGTERM
    stop_timeout_ms: int = 10_000  # then SIGKILL to the process group
    hang_signal: int = signal.SIGKILL  # to a hung worker's group; another signal gets 1 s before SIGKILL
    success_exit_codes: ExitStatuses = NO_EXIT_STATUSES  # clean besides exit 0 (systemd's SuccessExitStatus)
    restart_prevent_exit_codes: ExitStatuses = (
        NO_EXIT_STATUSES  # never restarted after these (RestartPreventExitStatus)
    )
    restart_force_exit_codes: ExitStatuses = NO_EXIT_STATUSES  # always restarted after these (RestartForceExitStatus)
    sd_notify: bool = False  # key type = "notify": started once it sends READY=1 on its NOTIFY_SOCKET
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cwd: Path  # absolute
    user: str | None = None
    inherit_env: bool | None = None  # None: inherit the supervisor's environment unless `user` is set
    umask: int | None = None
    max_memory_bytes: int | None = None
    watchdog_timeout_ms: int | None = None  # key watchdog: the code must call ctx.heartbeat() this often
    requires: tuple[str, ...] = ()  # services that must be RUNNING before this one starts
    processes: int = 1  # identical worker processes: instances NAME, NAME:1, NAME:2 ...
    # limits and identity, set up in the worker by the exec wrapper (docs/config.md "Limits and identity")
    rlimits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # name -> limit, -1 infinity
    nice: int | None = None
    oom_score_adjust: int | None = None
    group: str | None = None  # primary group instead of the user's
    supplementary_groups: tuple[str, ...] | None = None  # instead of the user's
    cpu_quota_percent: int | None = None  # per-service cgroup v2 cpu.max, in % of one CPU
    memory_max_bytes: int | None = None  # per-service cgroup v2 memory.max
    sockets: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # name -> tcp:// or unix: address
    # hooks: argv run around the service's life (docs/supervision.md "Hooks")
    before_start: tuple[str, ...] | None = None  # must exit 0, or the start failed
    after_start: tuple[str, ...] | None = None
    before_stop: tuple[str, ...] | None = None  # the stop signal waits for it
    after_stop: tuple[str, ...] | None = None
    on_fatal: tuple[str, ...] | None = None
    hook_timeout_ms: int = 30_000
    schedule: ScheduleConfig | None = None  # set when the service has a trigger (docs/scheduling.md)
    origin: str = "config"  # "config" or "runtime" (added through the control protocol)
    # The [services.NAME] table it was parsed from: what `update` patches. Not compared:
    # two tables that mean the same service are the same service.
    table: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    notify: NotifyRule | None = None  # key notify; None: [notify] default applies
    placement: str = "every"  # cluster mode: "every" node runs it, "one" copy, or "any:N" (docs/cluster.md)

    def __post_init__(self) -> None:
        # Direct construction (tests, embedding) gets the same immutable shapes as parsing.
        if self.command is not None and not isinstance(self.command, tuple):
            object.__setattr__(self, "command", tuple(self.command))
        if not isinstance(self.env, MappingProxyType):
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not isinstance(self.cwd, Path):
            object.__setattr__(self, "cwd", Path(self.cwd))

    @property
    def is_python(self) -> bool:
        """True for a Python target run by the worker runner, False for a command."""
        return self.target is not None

    @classmethod
    def for_command(cls, name: str, argv: Sequence[str], **overrides: Any) -> ServiceConfig:
        """A command service with defaults and field-name `overrides`; not validated."""
        values: dict[str, Any] = {"cwd": Path.cwd(), "start_timeout_ms": START_TIMEOUT_COMMAND_MS}
        return cls(name=name, command=tuple(argv), target=None, **(values | overrides))

    @classmethod
    def for_target(cls, name: str, target: str, **overrides: Any) -> ServiceConfig:
        """A Python-target service with defaults and field-name `overrides`; not validated."""
        values: dict[str, Any] = {"cwd": Path.cwd(), "start_timeout_ms": START_TIMEOUT_TARGET_MS}
        return cls(name=name, command=None, target=target, **(values | overrides))


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """The `[supervisor]` table, validated; paths absolute, endpoints filled in."""

    state_dir: Path
    control_endpoint: str
    workers_endpoint: str
    events_endpoint: str
    shutdown_timeout_ms: int = 30_000
    log_max_bytes: int = 10 * 1024 * 1024  # per service log file, before rotation
    log_backups: int = 3
    http: str | None = None  # "host:port" of the /health and /metrics endpoint
    store: str | None = None  # run history: None = SQLite in state_dir; "postgresql://..." to share it
    sample_interval_ms: int = 5_000  # how often every worker's CPU and memory are read
    history_keep: int = 1000  # finished runs kept per service and outcome
    history_max_age_ms: int = 30 * 86_400_000  # finished runs older than this are deleted
    # CURVE on tcp:// control and events endpoints (docs/security.md)
    curve_server_key: Path | None = None  # the supervisor's NAME.key_secret
    curve_clients: Path | None = None  # directory of client public keys (*.key): full access
    curve_readonly_clients: Path | None = None  # directory of client public keys: read-only commands only
    insecure: bool = False  # tcp:// without CURVE; logged at CRITICAL at every start
    max_tcp_connections: int = 1024  # CURVE clients connected at once over the tcp:// endpoints; more are refused
    allow_addresses: tuple[str, ...] = ()  # addresses every http action may reach despite block_private_addresses
    insecure_http: bool = False  # the HTTP API on a non-loopback address with no token (docs/api.md)
    tenant_max_pending_tasks: int = 10_000  # API tasks waiting to run, per tenant; more: 429
    tenant_max_runs_per_minute: int = 600  # runs one tenant may start through the API per minute; more: 429
    http_tls_cert: Path | None = None  # PEM certificate chain: the HTTP server speaks HTTPS (with http_tls_key)
    http_tls_key: Path | None = None  # PEM private key of http_tls_cert

    @classmethod
    def for_state_dir(cls, state_dir: Path, **overrides: Any) -> SupervisorConfig:
        """Defaults with every endpoint an ipc:// socket in `state_dir`; not validated."""
        ipc = {f"{kind}_endpoint": f"ipc://{state_dir}/{kind}.sock" for kind in ("control", "workers", "events")}
        return cls(state_dir=state_dir, **(ipc | overrides))


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config: where it came from, the supervisor's settings, services in file order."""

    source: str  # the path as given, or "<dict>"
    base_dir: Path  # relative paths resolve against it
    supervisor: SupervisorConfig
    services: Mapping[str, ServiceConfig]
    # What will not stop the config from starting but will stop a service: a command's
    # executable that is missing now (it may be deployed, or its mount appear, later).
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)
    notify: NotifyConfig = field(default_factory=NotifyConfig)  # [notify]: channels and the default rule
    cluster: ClusterConfig | None = None  # [cluster]: several nodes on one PostgreSQL (docs/cluster.md)
