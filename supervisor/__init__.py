"""supervise.supervisor: the supervisor as a library, and the daemon built on it.

    from supervise.supervisor import Supervisor, SyncSupervisor

    async with Supervisor.from_file("supervise.toml") as sup:   # in an asyncio program
        ...
    with SyncSupervisor.from_file("supervise.toml") as sup:     # anywhere else
        ...

See docs/embedding.md. The names below are imported on first use, so that
`import supervise.supervisor.cli` (the `supervise` command) does not load
asyncio, ZeroMQ and the rest of the daemon before it needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervise.protocol.errors import SuperviseError as SuperviseError
    from supervise.supervisor.config import Config as Config
    from supervise.supervisor.config import ServiceConfig as ServiceConfig
    from supervise.supervisor.config import SupervisorConfig as SupervisorConfig
    from supervise.supervisor.config import load_config as load_config
    from supervise.supervisor.config import parse_config as parse_config
    from supervise.supervisor.errors import AlreadyRunning as AlreadyRunning
    from supervise.supervisor.errors import ConfigError as ConfigError
    from supervise.supervisor.errors import ServiceNotFound as ServiceNotFound
    from supervise.supervisor.supervisor import Supervisor as Supervisor
    from supervise.supervisor.sync import SyncSupervisor as SyncSupervisor

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "Supervisor": "supervise.supervisor.supervisor",
    "SyncSupervisor": "supervise.supervisor.sync",
    "Config": "supervise.supervisor.config",
    "ServiceConfig": "supervise.supervisor.config",
    "SupervisorConfig": "supervise.supervisor.config",
    "load_config": "supervise.supervisor.config",
    "parse_config": "supervise.supervisor.config",
    "SuperviseError": "supervise.protocol.errors",
    "ConfigError": "supervise.supervisor.errors",
    "ServiceNotFound": "supervise.supervisor.errors",
    "AlreadyRunning": "supervise.supervisor.errors",
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
