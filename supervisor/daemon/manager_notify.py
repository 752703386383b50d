"""The supervisor as a systemd service: sd_notify to its own manager.

When `supervise start` runs under systemd with `Type=notify`, the manager sets
`NOTIFY_SOCKET` (and `WATCHDOG_USEC` with `WatchdogSec=`). The supervisor then
sends `READY=1` (with a `STATUS=` line) once every autostart service has
started, failed, or waits on a service that cannot come up any more, and
`WATCHDOG=1` every half `WATCHDOG_USEC` from its event loop, so a supervisor
whose loop is stuck is restarted by systemd. The variables are removed from the
supervisor's environment (sd_notify's `unset_environment`), so its workers do
not inherit them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from supervise.supervisor.core import state as core
from supervise.supervisor.daemon.registry import ServiceTable

__all__ = ["ManagerNotifier", "startup_settled"]

log = logging.getLogger("supervise")

SETTLE_CHECK_S = 0.05  # how often start-up is checked until READY=1; then only the watchdog runs
_HOPEFUL = frozenset({core.ServiceState.STARTING, core.ServiceState.BACKOFF, core.ServiceState.RUNNING})


def startup_settled(services: ServiceTable, pending: set[str]) -> bool:
    """No instance is STARTING, and no pending start waits on a service that may still come up.

    A service waiting (`requires`) on one that is FATAL or stopped will not start
    by itself: it does not hold READY=1 back, or systemd's start timeout would
    kill the supervisor and every healthy service with it.
    """
    if any(s.record.state is core.ServiceState.STARTING for s in services.values()):
        return False
    hopeful = {s.config.name for s in services.values() if s.record.state in _HOPEFUL}
    waiting = {services[n].config.name: services[n].config.requires for n in pending if n in services}
    grew = True
    while grew:  # a pending service is hopeful when all it requires is (a chain may come up in order)
        grew = False
        for name, requires in waiting.items():
            if name not in hopeful and all(dep in hopeful for dep in requires):
                hopeful.add(name)
                grew = True
    return not any(name in hopeful for name in waiting)


@dataclass
class ManagerNotifier:
    """Datagrams to the manager's `NOTIFY_SOCKET`; None-free: build it with `from_environ`."""

    address: str  # a path, or "\\0name" for the abstract namespace
    watchdog_s: float | None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> ManagerNotifier | None:
        """The notifier systemd's variables ask for (removing them), or None when not under systemd."""
        env = os.environ if environ is None else environ
        where = env.pop("NOTIFY_SOCKET", "")
        usec, watchdog_pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        if not where:
            return None
        watchdog_s = None
        if usec.isdigit() and int(usec) > 0 and watchdog_pid in ("", str(os.getpid())):
            watchdog_s = int(usec) / 1_000_000
        return cls("\0" + where[1:] if where.startswith("@") else where, watchdog_s)

    def send(self, fields: Mapping[str, str]) -> bool:
        """One datagram of KEY=VALUE lines; False (logged) when the manager did not take it."""
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(data, self.address)
        except OSError as e:
            log.warning("sd_notify to NOTIFY_SOCKET %s failed: %s", self.address, e)
            return False
        return True

    async def serve(self, settled: Callable[[], bool], status: Callable[[], str]) -> None:
        """READY=1 once `settled()`, then WATCHDOG=1 every half watchdog period, until cancelled."""
        watchdog = None if self.watchdog_s is None else asyncio.ensure_future(self._feed_watchdog())
        try:
            while not settled():
                await asyncio.sleep(SETTLE_CHECK_S)
            self.send({"READY": "1", "STATUS": status()})
            log.info("told systemd READY=1 (%s)", status())
            if watchdog is not None:
                await watchdog
            else:
                await asyncio.Event().wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog

    async def _feed_watchdog(self) -> None:
        assert self.watchdog_s is not None
        while True:
            self.send({"WATCHDOG": "1"})
            await asyncio.sleep(self.watchdog_s / 2)
