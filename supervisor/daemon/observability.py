"""What a person or a monitoring system sees: one object the `Supervisor` owns.

`Observability` ties the parts together: the `EventLog` (numbered events, replay
ring, PUB, log lines), the `MetricsBook` (pure aggregation), the `Sampler`
(psutil, one timer for every worker, on a thread of its own), the `max_memory`
check, the HTTP endpoint, and the snapshots the `metrics` and `status` commands
and `/health` return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import zmq.asyncio

from supervise.supervisor.core.clock import Clock
from supervise.supervisor.core.health import UP_STATES, service_healthy
from supervise.supervisor.core.metrics import MetricsBook, ProcessStats, count_within
from supervise.supervisor.core.samples import SampleHistory, capacity_for
from supervise.supervisor.daemon.events import EventLog
from supervise.supervisor.daemon.logtail import tail
from supervise.supervisor.daemon.sampler import Sampler

if TYPE_CHECKING:
    from supervise.supervisor.daemon.http import HttpServer
    from supervise.supervisor.daemon.ports import ServiceView
    from supervise.supervisor.daemon.runtime import ServiceRuntime

log = logging.getLogger("supervise")

SAMPLE_INTERVAL_S = 1.0


def is_scheduled(config: object) -> bool:
    """A service that runs on triggers rather than forever."""
    return getattr(config, "schedule", None) is not None


class Observability:
    """Owned by a `Supervisor`: created in `__init__`, started in `start`, closed in `close`.

    Args:
        sup: the supervisor whose services are described.
        clock: the supervisor's clock (monotonic ms for ages).
        on_over_memory: called with (service, rss_bytes, limit_bytes) when a worker
            stays over its `max_memory`; the supervisor feeds `OverMemory` to the core.
        sample_interval_s: seconds between two psutil samples of every worker.
    """

    def __init__(
        self,
        sup: ServiceView,
        *,
        clock: Clock,
        on_over_memory: Callable[[str, int, int], None],
        sample_interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._sup = sup
        self._clock = clock
        self._on_over_memory = on_over_memory
        self.sample_interval_s = sample_interval_s
        self.events = EventLog()
        self.book = MetricsBook()
        self.events.listeners.append(self.book.observe_event)
        self.samples = SampleHistory(capacity_for(round(sample_interval_s * 1000)))  # the charts' last minutes
        self._sampler: Sampler | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.http: HttpServer | None = None
        self.http_mounts: list[Callable[[Any], None]] = []  # more routes for the HTTP server (the API)
        self._registry: Any = None  # prometheus_client's, built at the first scrape
        self.notifications: Callable[[], Mapping[str, object]] | None = None  # the notifier's counters, if any
        self.cluster: Callable[[], Mapping[str, object]] | None = None  # the cluster agent's figures, if any

    # -- lifecycle ---------------------------------------------------------

    async def start(self, events_sock: zmq.asyncio.Socket | None) -> None:
        """Publish events on `events_sock`, start sampling, and serve HTTP if configured."""
        self.events.attach(events_sock)
        address = self._sup.config.supervisor.http
        if address is not None:
            from supervise.supervisor.daemon.http import HttpServer  # aiohttp is slow to import: only when asked for

            sup = self._sup.config.supervisor
            tls = (sup.http_tls_cert, sup.http_tls_key) if sup.http_tls_cert and sup.http_tls_key else None
            self.http = HttpServer(address, health=self.health, scrape=self.scrape, mounts=self.http_mounts, tls=tls)
            await self.http.start()
        self._sampler = Sampler()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="supervise-sampler")
        self._task = asyncio.create_task(self._sample_forever(), name="supervise-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # at most one sample in flight
            self._executor = None
        if self.http is not None:
            await self.http.close()
        self.events.attach(None)

    # -- inputs ------------------------------------------------------------

    def emit(self, service: str, kind: str, detail: Mapping[str, object], message: str = "") -> None:
        self.events.emit(service, kind, detail, message)

    def worker_metrics(self, service: str, incarnation: int, metrics: Mapping[str, Any]) -> None:
        self.book.observe_worker_metrics(service, incarnation, metrics.get("counters", {}), metrics.get("gauges", {}))

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            roots = self._worker_pids()
            assert self._sampler is not None and self._executor is not None
            try:
                per_service, own = await loop.run_in_executor(self._executor, self._sampler.sample, roots)
            except Exception:
                log.exception("sampling worker processes failed; trying again in %.1f s", self.sample_interval_s)
            else:
                self._apply(roots, per_service, own)
            await asyncio.sleep(self.sample_interval_s)

    def _worker_pids(self) -> dict[str, int]:
        return {name: svc.worker.pid for name, svc in self._sup.runtimes().items() if svc.worker is not None}

    def _apply(self, roots: Mapping[str, int], per_service: Mapping[str, ProcessStats], own: ProcessStats) -> None:
        """Hand a pass's figures to the metrics, the memory watch and the charts' history, in one go."""
        self.book.supervisor = own
        recorded: dict[str, tuple[float, int]] = {}
        services = self.book.services
        runtimes = self._sup.runtimes()
        for name, svc in runtimes.items():
            pid = svc.worker.pid if svc.worker is not None else None
            stats = per_service.get(name)
            if pid is None or roots.get(name) != pid or stats is None:
                if pid is None:
                    self.book.clear_sample(name)
                continue  # restarted while the sample was taken: wait for the next one
            m = services.get(name)
            limit = svc.config.max_memory_bytes
            # The sampler hands back the same object for a tree whose figures did not change: under
            # the limit, with no streak over it, recording it again would change nothing.
            unchanged = (
                m is not None
                and stats is m.process
                and m.memory_streak == 0
                and (limit is None or stats.rss_bytes <= limit)
            )
            if not unchanged:
                if self.book.observe_sample(name, pid, stats, limit) and limit is not None:
                    self._on_over_memory(name, stats.rss_bytes, limit)
                m = services.get(name)
            if m is not None and m.process is not None:
                recorded[name] = (m.process.cpu_percent, m.process.rss_bytes)
        self.samples.retain(runtimes)
        self.samples.record(self._clock.wall().timestamp(), recorded)

    # -- outputs -----------------------------------------------------------

    def sample_of(self, svc: ServiceRuntime) -> ProcessStats | None:
        """The last sample of a service's worker (a new object at each sample), or None."""
        m = self.book.services.get(svc.name)
        return m.process if m is not None and svc.worker is not None else None

    def resources(self, svc: ServiceRuntime) -> tuple[float | None, int | None]:
        """The CPU percent and RSS `status` shows for a service (None before a sample of its worker)."""
        process = self.sample_of(svc)
        if process is None:
            return None, None
        return round(process.cpu_percent, 1), process.rss_bytes

    def ping(self) -> dict[str, object]:
        """Where to find the other endpoints: included in `ping` and `status`."""
        return {
            "http": self.http.bound if self.http is not None else None,
            "http_tls": self.http is not None and self.http.tls is not None,
            "events": self._sup.config.supervisor.events_endpoint,
            "event_seq": self.events.seq,
        }

    def metrics(self, name: str | None = None) -> dict[str, Any]:
        """The `metrics` command's reply: the supervisor's figures and every service's (or one's)."""
        names = [name] if name is not None else self._sup.service_names()
        now_ms = self._clock.monotonic_ms()
        services = [self._service_metrics(self._sup.require(n), now_ms) for n in names]
        own = self.book.supervisor
        return {
            "supervisor": {
                **self._sup.ping(),
                "healthy": self.health()[0],
                "process": own.as_dict() if own is not None else None,
                "events": {"seq": self.events.seq, "published": self.events.published, "dropped": self.events.dropped},
                "bad_worker_messages": self._sup.bad_worker_messages,
                "control": self._sup.control_counters(),
                "sample_interval_s": self.sample_interval_s,
                "notifications": self.notifications() if self.notifications is not None else None,
                "cluster": self.cluster() if self.cluster is not None else None,
            },
            "services": services,
        }

    def _service_metrics(self, svc: ServiceRuntime, now_ms: int) -> dict[str, Any]:
        r = svc.record
        cfg = svc.config
        state = str(r.state)
        alive = r.pid is not None
        figures = self.book.service(svc.name).snapshot()
        if svc.worker is None:
            figures["process"] = None
        last_exit = None
        if r.last_exit is not None:
            last_exit = {"cause": str(r.last_exit.cause), "code": r.last_exit.code, "signal": r.last_exit.signal}
        return {
            "name": svc.name,
            "state": state,
            "pid": r.pid,
            "critical": cfg.critical,
            "healthy": service_healthy(state, critical=cfg.critical, scheduled=is_scheduled(cfg)),
            "uptime": (now_ms - r.running_since_ms) / 1000 if r.running_since_ms is not None and alive else None,
            "heartbeat_age": (now_ms - r.last_heartbeat_ms) / 1000
            if r.last_heartbeat_ms is not None and alive
            else None,
            "restarts": r.restarts,
            "restarts_in_window": count_within(r.restart_history_ms, now_ms, cfg.restart_window_ms),
            "last_exit": last_exit,
            "last_error": r.last_error,
            "max_memory_bytes": cfg.max_memory_bytes,
            **figures,
            **(self._sup.scheduler.figures(svc.name) if self._sup.scheduler is not None else {}),
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The verdict and body of `/health`: healthy when every critical service is.

        Errors and tracebacks are left out: `status` over the control socket has them.
        """
        details: dict[str, Any] = {}
        running = errors = 0
        healthy = True
        for name in self._sup.service_names():
            svc = self._sup.require(name)
            state = str(svc.record.state)
            ok = service_healthy(state, critical=svc.config.critical, scheduled=is_scheduled(svc.config))
            running += state in UP_STATES
            errors += not ok
            if svc.config.critical and not ok:
                healthy = False
            # State, health and counts only: no one authenticated to this endpoint, and an
            # error message can hold anything (a database URL with its password, a traceback).
            details[name] = {
                "healthy": ok,
                "status": state,
                "critical": svc.config.critical,
                "restarts": svc.record.restarts,
            }
        body = {
            "healthy": healthy,
            "status": "ok" if healthy else "unhealthy",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "pid": os.getpid(),
            "uptime": self._sup.ping().get("uptime"),
            "services": {"total": len(details), "running": running, "errors": errors},
            "details": details,
        }
        return healthy, body

    def events_since(self, seq: int, *, service: str | None, limit: int) -> dict[str, Any]:
        """The `events` command's reply: events after `seq`, optionally of one service."""
        return self.events.since(seq, service=service, limit=limit)

    def logs(self, name: str, lines: int) -> dict[str, Any]:
        """The last `lines` lines a service's workers wrote, and where to follow from (blocking I/O)."""
        sup = self._sup.config.supervisor
        path = sup.state_dir / "logs" / f"{name}.log"
        found = tail(path, lines, backups=sup.log_backups)
        return {"path": str(path), "lines": found.lines, "inode": found.inode, "offset": found.offset}

    def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """The `/metrics` body and content type."""
        from supervise.supervisor.daemon import exposition

        if self._registry is None:
            self._registry = exposition.open_registry(self.metrics)
        return exposition.render(self._registry, accept)
