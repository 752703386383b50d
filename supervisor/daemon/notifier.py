"""Notifications, the deciding half: events in, outbox rows out.

The `Notifier` listens to every event (`EventLog.listeners`), turns the ones
that matter into notification events (failure, retries_exhausted, timed_out,
lost, missed, fatal, recovered, success) and hands each to the history's
writer. There, in one transaction, the subject's no-storm episode is read from
the store (locked), passed through the pure policy (core/alerts.py), written
back, and one outbox row is added per message and channel: a run's event in
the transaction of the run's final state. Each row's id is its fact, `(run or
service incarnation, event)`, plus the channel, so the same fact never produces
two rows. The event loop never waits for the database. Delivery is
delivery.py, on an asyncio task of its own.

Other parts may add messages of their own (`enqueue`: a task's notify rule,
decided by the HTTP API) and channels of their own (`channel_sources`: a
channel named `PREFIX:KEY` is looked up by the source registered for PREFIX).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from supervise.protocol.url_policy import AddressPolicy, parse_allow_list
from supervise.supervisor.config.model import Config, ServiceConfig
from supervise.supervisor.config.notify import INLINE, Channel, Delivery, NotifyRule
from supervise.supervisor.core.alerts import BAD
from supervise.supervisor.core.clock import Clock
from supervise.supervisor.core.policies import should_retry
from supervise.supervisor.core.runs import RunState
from supervise.supervisor.daemon.delivery import Deliverer
from supervise.supervisor.daemon.notify_text import notification_to_dict
from supervise.supervisor.daemon.observation import Observation, wall_ms
from supervise.supervisor.daemon.outbox_journal import ObservationJournal
from supervise.supervisor.daemon.outbox_rows import OutboxRows, OutboxStore

__all__ = ["Notifier", "notification_to_dict"]

if TYPE_CHECKING:
    from supervise.supervisor.daemon.runtime import ServiceRuntime

log = logging.getLogger("supervise.notify")

_T = TypeVar("_T")
PRUNE_EVERY_MS = 3_600_000
_MISSED = frozenset({"missed", "missed_deadline"})
NOTICED_KEPT = 1_024  # events noticed ahead of their publication, remembered at most
_OBSERVED = frozenset({"spawned", "state", "run_finished", "run_skipped", "exited", "spawn_failed", "fatal"})
"""The event kinds `_observe` acts on (the rest, the notifier's own events among them, it ignores)."""
SCAN_EVERY_MS = 1_000  # the least time between two reads of the episodes (digests due, episodes open)


class OutboxWriter(Protocol):
    """The history's writer: outbox rows queued behind (and committed with) the state changes."""

    def add_notifications(self, write: Callable[[], object], *, then: Callable[[], None] | None = None) -> None: ...


class NotifyHost(Protocol):
    """What the notifier needs from the daemon."""

    @property
    def config(self) -> Config: ...

    def require(self, name: str) -> ServiceRuntime: ...

    def publish(self, service: str, kind: str, detail: Mapping[str, object]) -> None: ...

    def service_names(self) -> list[str]: ...


IDLE_POLL_S = 5.0  # with nothing pending: how often the outbox is read again


class Notifier:
    """Decides what to send and writes it to the outbox; owns the `Deliverer`.

    Args:
        host: the daemon (config, services, events).
        store: where the outbox lives (the history store).
        clock: monotonic time for the storm policy, wall time for rows.
        instance: tells this supervisor start's service incarnations from an earlier start's.
        writer: the history's writer; rows then go in the transaction of the change that caused
            them (a run's final state). Without one, rows are written on the notifier's thread.
    """

    def __init__(
        self,
        host: NotifyHost,
        store: OutboxStore,
        *,
        clock: Clock,
        instance: str,
        writer: OutboxWriter | None = None,
    ) -> None:
        self._host = host
        self._store = store
        self._writer = writer
        self._clock = clock
        self._instance = instance
        self._failing: set[str] = set()  # subjects that may be in a failing episode (the store decides)
        self._rows = OutboxRows(store, self._failing)
        self._enqueued = 0  # rows of messages decided elsewhere (`enqueue`)
        self._scanned_ms: int | None = None
        self._journal: ObservationJournal | None = None  # a service event's first durable record
        self._hostname = socket.gethostname()
        self._noticed: dict[str, None] = {}  # run ids whose event was decided by `notice` (oldest first)
        self._incarnations: dict[str, int] = {}  # service instance -> its latest spawned incarnation
        self._stable_timers: dict[str, asyncio.TimerHandle] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="supervise-notify-store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.channel_sources: dict[str, Callable[[str], Channel | None]] = {}
        self.deliverer = Deliverer(
            store,
            channel=self.channel,
            longest_timeout_ms=self._longest_timeout_ms,
            in_store=self.in_store,
            wall=clock.wall,
            publish=host.publish,
            addresses=self._addresses,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering: rows left by an earlier run of this supervisor go first, and the
        service events its journal holds that never reached the store are written first."""
        self._loop = asyncio.get_running_loop()
        self._open_journal()
        self._task = asyncio.create_task(self._tick_forever(), name="supervise-notify")

    async def close(self) -> None:
        self._closed = True
        for handle in self._stable_timers.values():
            handle.cancel()
        self._stable_timers.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.deliverer.close()
        self._executor.shutdown(wait=True)  # rows already decided are written
        if self._journal is not None:
            self._journal.close()

    async def in_store(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store call on the notifier's thread (in order with the outbox writes)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))

    async def _tick_forever(self) -> None:
        pruned_at: int | None = None
        while True:
            now_ms = self._clock.monotonic_ms()
            try:
                if self._scanned_ms is None or now_ms - self._scanned_ms >= SCAN_EVERY_MS:
                    self._scanned_ms = now_ms
                    await self._scan()
                if pruned_at is None or now_ms - pruned_at >= PRUNE_EVERY_MS:
                    pruned_at = now_ms
                    await self._prune()
                next_in = await self.deliverer.deliver_due()
            except Exception:  # keep delivering: one bad pass must not end notifications
                log.exception("notifications: a delivery pass failed; trying again in 1 s")
                next_in = 1.0
            # Woken at once by a new row or a finished attempt; otherwise at the soonest row's time,
            # and at least every IDLE_POLL_S (rows another supervisor sharing the store left behind).
            await self.deliverer.wait(IDLE_POLL_S if next_in is None else min(max(next_in, 0.01), IDLE_POLL_S))

    def _open_journal(self) -> None:
        """Queue the lines of earlier starts' journals (each skipped if its mark says it is in),
        then begin this start's journal. Synchronous, so that they go before any new event."""
        journal = ObservationJournal(self._host.config.supervisor.state_dir)
        try:
            leftovers = journal.leftovers()
            journal.start()
        except OSError as exc:
            log.error("notifications journal unavailable (%s): a service event is kept in memory until written", exc)
            return
        self._journal = journal
        for left in leftovers:
            for seq, obs in left.lines:
                self._submit(functools.partial(self._rows.decide, obs, mark=(left.journal, seq), check=True))
            if left.lines:
                log.info("notifications: applying %d service events from %s", len(left.lines), left.path.name)
            forget = functools.partial(self._store.put_journal_mark, left.journal, None)
            self._submit(forget, then=functools.partial(left.path.unlink, missing_ok=True))

    async def _scan(self) -> None:
        """Read the open episodes (so that a service back up stable closes one opened before a
        restart, or by another node) and queue a digest for each whose min_interval has passed."""
        active = await self.in_store(self._store.active_episodes, wall_ms(self._clock.wall()))
        self._failing |= {e.subject for e in active if e.failing}
        for episode in active:
            if not episode.due:
                continue
            obs = self._observation(episode.subject, "digest", fact="", detail={})
            if obs is not None and obs.rule == episode.rule:
                self._submit(functools.partial(self._rows.send_digest, obs))

    async def _prune(self) -> None:
        """Delivered and failed rows older than history_max_age go; pending ones stay."""
        before = self._clock.wall() - timedelta(milliseconds=self._host.config.supervisor.history_max_age_ms)
        try:
            deleted = await self.in_store(self._store.prune_notifications, before)
        except Exception as exc:
            log.warning("could not prune the notifications outbox: %s", exc)
            return
        if deleted:
            log.info("pruned %d old notifications", deleted)

    # -- events in ---------------------------------------------------------------------------

    def notice(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        """An event decided before it is published: what it causes joins the history writer's open
        `together()` group now (a missed occurrence's rows, committed with its insert), and the
        event, published once that insert won, is not decided again. It never raises."""
        self.observe(service, kind, detail)
        run_id = detail.get("run_id")
        if isinstance(run_id, str):
            self._noticed[run_id] = None
            while len(self._noticed) > NOTICED_KEPT:  # an insert that lost is never published
                self._noticed.pop(next(iter(self._noticed)))

    def observe(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        """An `EventLog` listener: every event of the supervisor passes here; it never raises."""
        if self._closed or kind not in _OBSERVED:
            return  # e.g. run_started, run_progress: two events a run, none of them a notification
        if kind == "run_skipped" and self._noticed.pop(str(detail.get("run_id")), 0) is None:
            return  # decided already (`notice`)
        try:
            self._observe(service, kind, detail)
        except Exception:  # a notification problem must not reach the state machine that emitted the event
            log.exception("notifications: could not handle %s event of %s", kind, service)

    def _observe(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        try:
            svc = self._host.require(service)
        except LookupError:
            return
        cfg = svc.config
        incarnation = detail.get("incarnation")
        if kind == "spawned" and isinstance(incarnation, int):
            self._incarnations[service] = incarnation
            return
        if kind == "state" and detail.get("to") == "RUNNING":
            self._arm_stable(service, cfg)
            return
        found = self._classify(service, kind, detail, cfg)
        if found is not None:
            event, fact = found
            self._feed(cfg, event, fact, detail)

    def _classify(
        self, service: str, kind: str, detail: Mapping[str, object], cfg: ServiceConfig
    ) -> tuple[str, str] | None:
        """(notification event, fact key) for an event that matters, else None."""
        if kind == "run_finished":
            event = _run_event(str(detail.get("state")), detail.get("attempt"), cfg)
            return None if event is None else (event, f"run:{detail.get('run_id')}")
        if kind == "run_skipped" and detail.get("reason") in _MISSED:
            return "missed", f"run:{detail.get('run_id')}"
        incarnation = f"svc:{service}:{self._instance}:{self._incarnations.get(service, 0)}"
        if kind == "exited" and detail.get("cause") != "stopped" and (detail.get("code") or detail.get("signal")):
            return "failure", incarnation
        if kind == "spawn_failed":
            return "failure", incarnation
        if kind == "fatal":
            return "fatal", incarnation
        return None

    def _arm_stable(self, service: str, cfg: ServiceConfig) -> None:
        """A service RUNNING for stable_after (with no new failure) has recovered. Armed whether or
        not an episode is known to be open: one opened before a restart, or by another node, is
        known once the notifier has read the store (`_feed` decides at the end)."""
        if self._loop is None or self.rule_for(cfg) is None:
            return
        old = self._stable_timers.pop(service, None)
        if old is not None:
            old.cancel()
        incarnation = self._incarnations.get(service, 0)

        def check() -> None:
            self._stable_timers.pop(service, None)
            try:
                svc = self._host.require(service)
            except LookupError:
                return
            if str(svc.record.state) == "RUNNING" and svc.record.incarnation == incarnation:
                self._feed(cfg, "recovered", f"svc:{service}:{self._instance}:{incarnation}", {})

        self._stable_timers[service] = self._loop.call_later(cfg.stable_after_ms / 1000, check)

    def _feed(self, cfg: ServiceConfig, event: str, fact: str, detail: Mapping[str, object]) -> None:
        rule = self.rule_for(cfg)
        if rule is None:
            return
        if event in BAD:
            self._failing.add(cfg.name)  # at once: a restart that comes up stable must arm its timer
        elif cfg.name not in self._failing and (event != "success" or "success" not in rule.on):
            return  # no episode to close, no success to send: nothing to decide
        obs = self._observation(cfg.name, event, fact=fact, detail=detail)
        if obs is None:
            return
        journal = self._journal
        seq = journal.append(obs) if journal is not None and obs.fact.startswith("svc:") else None
        if journal is None or seq is None:  # a run's event is durable with the run (its group)
            self._submit(functools.partial(self._rows.decide, obs))
            return
        self._submit(
            functools.partial(self._rows.decide, obs, mark=(journal.journal, seq)),
            then=functools.partial(journal.committed, seq),
        )

    def _observation(self, subject: str, event: str, *, fact: str, detail: Mapping[str, object]) -> Observation | None:
        """What the writer needs to decide about an event, read on the event loop."""
        try:
            svc = self._host.require(subject)
        except LookupError:
            return None
        rule = self.rule_for(svc.config)
        if rule is None:
            return None
        sup = self._host.config.supervisor
        return Observation(
            rule="own" if svc.config.notify is not None else "default",
            subject=subject,
            event=event,
            fact=fact,
            on=frozenset(rule.on),
            min_interval_ms=rule.min_interval_ms,
            targets=rule.targets,
            detail=dict(detail),
            wall=self._clock.wall(),
            last_error=svc.record.last_error if event in ("failure", "fatal") else None,
            incarnation=self._incarnations.get(subject),
            log_path=sup.state_dir / "logs" / f"{subject}.log",
            log_backups=sup.log_backups,
        )

    def _submit(self, decide: Callable[[], object], then: Callable[[], object] | None = None) -> None:
        """To the history's writer (in the open `together()` group, if any), else to the notifier's
        thread; `then` once it is committed."""

        def committed() -> None:
            if then is not None:
                then()
            self._wake_deliverer()

        if self._writer is not None:
            self._writer.add_notifications(decide, then=committed)
            return
        future = self._executor.submit(self._in_transaction, decide)
        future.add_done_callback(lambda f: committed() if f.exception() is None else self._written(f))

    def _in_transaction(self, decide: Callable[[], object]) -> None:
        batch = getattr(self._store, "batch", None)
        if batch is None:
            decide()
            return
        with batch():
            decide()

    def rule_for(self, cfg: ServiceConfig) -> NotifyRule | None:
        """The service's own rule, else `[notify] default`; None when it has no channel."""
        rule = cfg.notify if cfg.notify is not None else self._host.config.notify.default
        return rule if rule is not None and rule.targets else None

    def channel(self, service: str, name: str) -> Channel | None:
        """Where a row goes: a `[notify.NAME]` channel, the service's own webhook (INLINE), or a source's."""
        prefix, colon, key = name.partition(":")
        if colon:
            source = self.channel_sources.get(prefix)
            return source(key) if source is not None else None
        if name != INLINE:
            return self._host.config.notify.channels.get(name)
        try:
            rule = self._host.require(service).config.notify
        except LookupError:
            return None
        return rule.webhook if rule is not None else None

    def _addresses(self) -> AddressPolicy:
        return AddressPolicy(allow=parse_allow_list(list(self._host.config.supervisor.allow_addresses)))

    def _longest_timeout_ms(self) -> int:
        timeouts = [c.timeout_ms for c in self._host.config.notify.channels.values()]
        if self.channel_sources:
            timeouts.append(Delivery().timeout_ms)  # a source's channels keep the default timeout
        for name in self._host.service_names():
            rule = self._host.require(name).config.notify
            if rule is not None and rule.webhook is not None:
                timeouts.append(rule.webhook.timeout_ms)
        return max(timeouts, default=0)

    # -- rows out ----------------------------------------------------------------------------

    def enqueue(self, payload: dict[str, Any], channels: tuple[str, ...], fact: str) -> concurrent.futures.Future[None]:
        """Write a message decided elsewhere to the outbox, one row per channel, past the no-storm gate.

        `payload` has the template variables of SAMPLE_MESSAGE (`text` and `output_lines`
        are filled in here); each row's id is `fact|event|channel`, so enqueueing the
        same fact again changes nothing. The future is done once the rows are written.
        """
        self._enqueued += len(channels)
        future = self._executor.submit(self._rows.write, payload, channels, fact, None, 0)
        future.add_done_callback(self._written)
        return future

    def _written(self, future: concurrent.futures.Future[None]) -> None:
        error = future.exception()
        if error is not None:
            log.error("could not write a notification to the outbox: %s", error)
            return
        self._wake_deliverer()

    def _wake_deliverer(self) -> None:
        """From a writer thread, once rows are committed."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.deliverer.wake)
            except RuntimeError:  # closed meanwhile
                pass

    # -- what status, metrics and the `notifications` command show -------------------------

    @property
    def queued(self) -> int:
        """Rows written to the outbox by this supervisor."""
        return self._rows.queued + self._enqueued

    def summary(self) -> dict[str, object]:
        """Counters for `status` and `/metrics`."""
        return {"queued": self.queued, **self.deliverer.counters()}

    async def listing(self, *, failed_only: bool, limit: int) -> list[dict[str, object]]:
        """The `notifications` command's rows, newest first."""
        rows = await self.in_store(self._store.list_notifications, failed_only=failed_only, limit=limit)
        return [notification_to_dict(n) for n in rows]


def _run_event(state: str, attempt: object, cfg: ServiceConfig) -> str | None:
    if state == RunState.FAILED:
        retry = cfg.schedule.retry if cfg.schedule is not None else None
        if retry is not None and isinstance(attempt, int) and should_retry(retry, RunState.FAILED, attempt) is None:
            return "retries_exhausted"
        return "failure"
    return {RunState.TIMED_OUT: "timed_out", RunState.LOST: "lost", RunState.SUCCEEDED: "success"}.get(
        RunState(state) if state in RunState._value2member_map_ else RunState.PENDING
    )
