"""The daemon of `supervise start CONFIG.toml`, with no click: what `start` runs once its arguments are read.

The daemon lives for weeks; what it imports, it holds. `cli.fast` reads a plain
`start CONFIG.toml [--log-level L] [--log-format F]` itself and comes here, so the
daemon never imports click and the command modules (about 2 MB of its memory).
The click command `start` (and `run-service`) comes here too; both turn a
`StartFailed` into the same message and exit code.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from supervise.supervisor.cli.exits import Exit

if TYPE_CHECKING:
    from supervise.supervisor.config.model import Config

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class StartFailed(Exception):
    """The daemon cannot start (or ended on an error): the message to print and the exit code."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def run_daemon(path: str, log_level: str, log_format: str = "text") -> NoReturn:
    """Load the config at `path` and serve it in the foreground (see `serve`).

    Raises:
        StartFailed: the config is invalid, or the daemon cannot start.
    """
    from supervise.supervisor.config.loader import load_config
    from supervise.supervisor.core.errors import ConfigError

    # Start-up builds what the daemon keeps (the config, each service and its worker) and frees
    # little: the cyclic collector would walk the growing heap again and again for nothing (4 %
    # of a cold start of 2 000 services). It is on again once start-up is frozen (`serve`).
    gc.disable()
    try:
        config = load_config(path)
    except ConfigError as e:
        raise StartFailed(f"config error:\n{e}", Exit.CONFIG) from None
    serve(config, log_level, log_format)


def serve(config: Config, log_level: str, log_format: str = "text") -> NoReturn:
    """Run a supervisor for `config` in the foreground until SIGTERM/SIGINT or `shutdown`; exits.

    Raises:
        StartFailed: the daemon cannot start (already running, a bad config, a store it cannot open).
    """
    import asyncio

    from supervise.supervisor.core.errors import AlreadyRunning, ConfigError
    from supervise.supervisor.daemon.descriptors import raise_open_files_limit
    from supervise.supervisor.daemon.logformat import configure_logging
    from supervise.supervisor.daemon.manager_notify import ManagerNotifier
    from supervise.supervisor.daemon.supervisor import Supervisor
    from supervise.supervisor.store.base import NodeNameTaken, StoreError

    configure_logging(log_level, log_format)
    for problem in config.warnings:
        logging.getLogger("supervise").warning("%s", problem.render(config.source))
    before, after = raise_open_files_limit()  # connections cost descriptors; docs/security.md
    if after != before:
        logging.getLogger("supervise").debug("open files limit raised from %d to %d", before, after)
    supervisor = Supervisor(config, handle_signals=True)
    manager = ManagerNotifier.from_environ()  # under systemd (Type=notify): before any worker inherits it

    def running_status() -> str:
        services: Any = supervisor.status()["services"]
        states = [s["state"] for s in services]
        return f"{states.count('RUNNING')} of {len(states)} services running"

    async def run() -> None:
        try:
            await supervisor.start()
        except BaseException:
            gc.enable()
            raise
        # What start-up built (modules, config, services) lives as long as the daemon: moved out
        # of the cyclic collector's sight, a full collection no longer walks it (40 ms with 2 000
        # services, in the middle of a `status`). The daemon only: an embedding program decides its own.
        gc.collect()
        gc.freeze()
        gc.enable()
        told = None
        if manager is not None:
            told = asyncio.create_task(manager.serve(supervisor.startup_settled, running_status))
        try:
            await supervisor.serve_forever()
        finally:
            if told is not None:
                told.cancel()

    try:
        asyncio.run(run())
    except AlreadyRunning as e:
        raise StartFailed(str(e)) from None
    except ConfigError as e:
        raise StartFailed(f"config error:\n{e}", Exit.CONFIG) from None
    except NodeNameTaken as e:
        raise StartFailed(str(e), Exit.CONFIG) from None
    except StoreError as e:  # the history or cluster database cannot be opened
        raise StartFailed(f"cannot start: {e}") from None
    sys.exit(Exit.FAILED if supervisor.forced_stop else Exit.OK)
