"""supervise.supervisor: the supervisor as a library, and the daemon built on it.

    from supervise.supervisor import Supervisor, SyncSupervisor

    async with Supervisor.from_file("supervise.toml") as sup:   # in an asyncio program
        ...
    with SyncSupervisor.from_file("supervise.toml") as sup:     # anywhere else
        ...

See docs/embedding.md. The names below are imported on first use, so that
`import supervise.supervisor.cli.main` (the `supervise` command) does not load
asyncio, ZeroMQ and the rest of the daemon before it needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervise.protocol.errors import SuperviseError as SuperviseError
    from supervise.supervisor.config.loader import Config as Config
    from supervise.supervisor.config.loader import ServiceConfig as ServiceConfig
    from supervise.supervisor.config.loader import SupervisorConfig as SupervisorConfig
    from supervise.supervisor.config.loader import load_config as load_config
    from supervise.supervisor.config.loader import parse_config as parse_config
    from supervise.supervisor.core.errors import AlreadyRunning as AlreadyRunning
    from supervise.supervisor.core.errors import ConfigError as ConfigError
    from supervise.supervisor.core.errors import ServiceNotFound as ServiceNotFound
    from supervise.supervisor.daemon.supervisor import Supervisor as Supervisor
    from supervise.supervisor.sync import SyncSupervisor as SyncSupervisor

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "Supervisor": "supervise.supervisor.daemon.supervisor",
    "SyncSupervisor": "supervise.supervisor.sync",
    "Config": "supervise.supervisor.config.loader",
    "ServiceConfig": "supervise.supervisor.config.loader",
    "SupervisorConfig": "supervise.supervisor.config.loader",
    "load_config": "supervise.supervisor.config.loader",
    "parse_config": "supervise.supervisor.config.loader",
    "SuperviseError": "supervise.protocol.errors",
    "ConfigError": "supervise.supervisor.core.errors",
    "ServiceNotFound": "supervise.supervisor.core.errors",
    "AlreadyRunning": "supervise.supervisor.core.errors",
}

__all__ = [
    "AlreadyRunning",
    "Config",
    "ConfigError",
    "ServiceConfig",
    "ServiceNotFound",
    "SuperviseError",
    "Supervisor",
    "SupervisorConfig",
    "SyncSupervisor",
    "load_config",
    "parse_config",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
