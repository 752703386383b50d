"""Store writes off the event loop: a queue, one writer thread, retries in order.

A history database locked by another process (an `sqlite3` shell holding a
transaction, a backup) must not stall supervision: the event loop only appends
to a bounded queue, and one thread writes, retrying a failing write with backoff
and keeping the order. Reads go straight to the store (in WAL mode they do not
wait for writers). Writes whose result the caller needs (a PostgreSQL store's
`insert_run`, where the answer says which supervisor runs an occurrence) stay
synchronous.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from supervise.supervisor.core.runs import Run
from supervise.supervisor.store.base import ScheduleState, Store, StoreError

log = logging.getLogger("supervise.store")

MAX_QUEUED = 100_000  # writes held while the database is unavailable; beyond, the oldest are dropped
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
BATCH = 256  # writes committed in one transaction at most, when the store offers `batch()`
SHARED_BATCH = 64  # run updates committed in one transaction at most on a shared store
READ_YOUR_WRITES_S = 1.0  # `runs` waits this long at most for the writes queued before it


@dataclass(frozen=True, slots=True)
class _Write:
    what: str  # for the log
    write: Callable[[], object]
    then: Callable[[], None] | None  # called on the writer thread once the write is committed
    updates: str | None  # the run id, for an `update_run`
    group: int = 0  # writes queued in one `together()` block share a non-zero group: one transaction
    barrier: bool = False  # a read of pending rows must wait for it (see `unsettled`)
    caused: bool = False  # caused by its group's run write: skipped when that write changed nothing
    atomic: bool = False  # several statements that must be one transaction, even alone (outbox rows)
    decides: bool = False  # its group's `caused` writes are skipped when it returns False (an insert that lost)


def _solo_updates(queue: collections.deque[_Write], limit: int) -> int:
    """How many writes at the head of `queue` are run state changes with nothing else in their
    transaction (no group, or a group of that write alone), at most `limit`: on a shared store,
    several of these (the node's own runs) are committed together."""
    n = 0
    while n < min(limit, len(queue)):
        w = queue[n]
        if w.updates is None or w.atomic:
            break
        if w.group and n + 1 < len(queue) and queue[n + 1].group == w.group:
            break  # its group has more writes (the notifications its final state causes)
        n += 1
    return n


def _rest_of_group(group: int, following: Iterable[_Write]) -> list[_Write]:
    """The writes after a batch's last one that belong to its group: a group is never split."""
    return list(itertools.takewhile(lambda w: w.group == group, following)) if group else []


class QueuedStore:
    """Wraps a `Store`: the same reads, and writes queued for one writer thread."""

    def __init__(self, store: Store, *, shared: bool) -> None:
        self.store = store
        self._shared = shared  # several supervisors use it: insert_run's answer matters
        self._queue: collections.deque[_Write] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self.dropped = 0
        self._enqueued = 0  # writes ever queued
        self._done = 0  # writes ever finished (written, failed for good, or dropped)
        self.failing_since: str | None = None  # the last error while writes are being retried
        self._batch: Callable[[], AbstractContextManager[None]] | None = getattr(store, "batch", None)
        self._batch_failed = False
        self._merge = self._batch is not None and not shared  # several writes per transaction (SQLite)
        self._barriers = 0  # queued writes flagged `barrier`, not yet done
        self._holding = 0  # `together()` blocks open: the writer waits for them to close
        self._held = 0  # `held()` blocks open: the writer waits for them to close too
        self._group = 0  # the group of the open `together()` block
        self._groups = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="supervise-store-writer", daemon=True)
        self._thread.start()

    # -- reads: straight through -------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def written(self, timeout_s: float = READ_YOUR_WRITES_S) -> bool:
        """Wait (without blocking the event loop) until the writes queued so far are done,
        so that a read shows what a client just added; False at the timeout."""
        target = self._enqueued
        deadline = time.monotonic() + timeout_s
        while self._done < target:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    def wait_written(self, timeout_s: float) -> bool:
        """Wait until every write queued so far has been done; False at the timeout."""
        with self._wake:
            target = self._enqueued
            return self._wake.wait_for(lambda: self._done >= target, timeout_s)

    # -- writes: queued ------------------------------------------------------------------------

    def insert_run(self, run: Run, *, then: Callable[[], None] | None = None, barrier: bool = False) -> bool:
        """Queue the insert; `then` is called (on the writer thread) once it is committed.
        `barrier`: a read of pending rows waits for it (`unsettled`)."""
        if self._shared:
            claimed = self.store.insert_run(run)
            if claimed and then is not None:
                then()
            return claimed
        self._put(f"insert run {run.run_id}", lambda: self.store.insert_run(run), then, barrier=barrier)
        return True  # one supervisor owns this history: its own occurrences are its own

    def insert_first(self, run: Run, *, won: Callable[[], None] | None = None) -> None:
        """Queue the insert of an occurrence's row that decides its `together()` group, even on a
        shared store: the writes caused inside the block (its notification rows) are committed in
        the insert's transaction when the insert won the occurrence's unique key, and not written
        at all when another supervisor recorded the occurrence first. `won` is called (on the
        writer thread) once a winning insert is committed."""
        result: list[bool] = []

        def write() -> bool:
            result[:] = [self.store.insert_run(run)]
            return result[0]

        def then() -> None:
            if result == [True] and won is not None:
                won()

        self._put(f"insert run {run.run_id}", write, then, decides=True)

    def update_run(self, run: Run, *, then: Callable[[], None] | None = None, barrier: bool = False) -> bool:
        self._put(
            f"update run {run.run_id}", lambda: self.store.update_run(run), then, updates=run.run_id, barrier=barrier
        )
        return True

    def add_notifications(self, write: Callable[[], object], *, then: Callable[[], None] | None = None) -> None:
        """Queue a write of outbox rows (`write` adds them, on the writer thread, in one transaction
        with a store that offers `batch()`): inside a `together()` block, in the same transaction as
        the state change that caused them, and skipped when that change was refused (an update of
        the run that changed nothing: a fenced compare-and-set in cluster mode)."""
        self._put("notification rows", write, then, caused=self._group != 0, atomic=True)

    @contextmanager
    def together(self) -> Iterator[None]:
        """The writes queued inside this block are committed in one transaction (a run's final
        state and the notification rows it causes), with a store that offers `batch()`."""
        with self._wake:
            if self._holding == 0:
                self._group = next(self._groups)
            self._holding += 1
        try:
            yield
        finally:
            with self._wake:
                self._holding -= 1
                if self._holding == 0:
                    self._group = 0
                    if not self._held:  # else the held block's end wakes the writer
                        self._wake.notify()

    @contextmanager
    def held(self) -> Iterator[None]:
        """The writer waits until this block ends, then takes what was queued inside in as few
        batches as fit: updates of one run queued in the block are merged (a run that started and
        finished within one read of the worker channel is written once), and the writer does not
        compete with the event loop for the interpreter while the block runs. Unlike `together()`,
        the writes are no group: each batch is one transaction, as without the block. A store
        shared by several supervisors is not held: its writes go as they come, a few run updates
        per transaction at most, so that rows stay locked briefly."""
        if not self._merge:
            yield
            return
        with self._wake:
            self._held += 1
        try:
            yield
        finally:
            with self._wake:
                self._held -= 1
                if self._held == 0:
                    self._wake.notify_all()

    def put_schedule_state(self, service: str, state: ScheduleState) -> None:
        self._put(f"schedule state of {service}", lambda: self.store.put_schedule_state(service, state))

    def remove_oneshot(self, oneshot_id: str) -> bool:
        self._put(f"remove one-shot {oneshot_id}", lambda: self.store.remove_oneshot(oneshot_id))
        return True

    def prune(self, keep_per_outcome: int, max_age: timedelta, now: datetime) -> int:
        self._put("prune", lambda: self.store.prune(keep_per_outcome, max_age, now))
        return 0  # counted and logged by the writer

    @property
    def shared(self) -> bool:
        """Several supervisors use this store (PostgreSQL): claims must be compare-and-set."""
        return self._shared

    @property
    def pending(self) -> int:
        """Writes queued and not yet done."""
        return len(self._queue)

    @property
    def unsettled(self) -> int:
        """Queued writes flagged `barrier` not yet done: rows a read of pending runs must not miss
        (a pending run added beyond the scheduler's window, one cancelled there). Unlike `pending`,
        this drops to 0 during a long burst of other writes."""
        return self._barriers

    def _put(
        self,
        what: str,
        write: Callable[[], object],
        then: Callable[[], None] | None = None,
        *,
        updates: str | None = None,
        barrier: bool = False,
        caused: bool = False,
        atomic: bool = False,
        decides: bool = False,
    ) -> None:
        with self._wake:
            if len(self._queue) >= MAX_QUEUED:
                self._barriers -= self._queue.popleft().barrier
                self.dropped += 1
                self._done += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.error("history writes are failing and %d were dropped (queue full)", self.dropped)
            self._queue.append(_Write(what, write, then, updates, self._group, barrier, caused, atomic, decides))
            self._barriers += barrier
            self._enqueued += 1
            if not (self._held or self._holding):  # else the block's end wakes the writer
                self._wake.notify()

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            with self._wake:
                while (not self._queue or self._holding or self._held) and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                head = [self._queue[0]]
                in_id_order = False
                # A prune commits its own batches (and SQLite's vacuum ends any open transaction). On a
                # shared store, only plain run updates are merged: other rows locked in any order
                # could deadlock with another supervisor's transaction, or with the lease renewals.
                if self._merge and not self._batch_failed and head[0].what != "prune":
                    head += itertools.takewhile(lambda w: w.what != "prune", itertools.islice(self._queue, 1, BATCH))
                elif self._shared and self._batch is not None and not self._batch_failed:
                    # The node's own runs' state changes, one commit for the lot (each commit waits
                    # for the server's disk: one per change fell tens of seconds behind in a burst).
                    # They lock their rows in run id order, as the lease renewal does.
                    solo = _solo_updates(self._queue, SHARED_BATCH)
                    head = list(itertools.islice(self._queue, max(solo, 1)))
                    in_id_order = solo > 1
                # a group is never split, even when retried alone after a failed batch
                head += _rest_of_group(head[-1].group, itertools.islice(self._queue, len(head), None))
            try:
                results = self._write_all(head, in_id_order=in_id_order)
            except StoreError as e:
                if len(head) > 1 and not self._batch_failed:
                    self._batch_failed = True  # one at a time until this write is through
                    continue
                if self.failing_since is None:
                    log.error("history write failed (%s): %s; retrying, supervision goes on", head[0].what, e)
                self.failing_since = str(e)
                with self._wake:
                    if self._closing and delay >= RETRY_MAX_S:
                        log.error("giving up on %d history writes at shutdown: %s", len(self._queue), e)
                        return
                    self._wake.wait(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            except Exception:
                log.exception("history write failed (%s); dropped", head[0].what)
                results = [None] * len(head)
                head = head[:1]
            self._batch_failed = False
            for write, result in zip(head, results, strict=False):
                if write.what == "prune" and result:
                    log.info("pruned %s old runs from the history", result)
                if write.then is not None:
                    try:
                        write.then()
                    except RuntimeError:
                        pass  # the event loop closed at shutdown
            if self.failing_since is not None:
                log.warning("history writes work again (%d waiting)", len(self._queue) - len(head))
                self.failing_since = None
            delay = RETRY_FIRST_S
            with self._wake:
                for _ in head:
                    self._barriers -= self._queue.popleft().barrier
                self._done += len(head)
                self._wake.notify_all()

    def _write_all(self, head: list[_Write], *, in_id_order: bool = False) -> list[object]:
        """Run the writes in one transaction when the store can (`batch()`: SQLite, PostgreSQL): one
        group's, or (SQLite) up to BATCH queued writes, or (a shared store) up to SHARED_BATCH run
        updates with nothing else in their transactions, executed `in_id_order` of their runs.

        In a batch, an update of a run that a later update in the same batch overwrites is
        left out: `update_run` writes the whole row, so the last one says it all. A busy
        service's run often goes queued, starting, running and finished within one batch.
        A write `caused` by its group's run update is skipped when that update changed
        nothing, or when its group's `insert_first` lost the occurrence to another
        supervisor: the state change did not happen, so neither does what it causes.
        """
        if self._batch is None or (len(head) == 1 and not head[0].atomic and not head[0].group):
            del head[1:]
            return [head[0].write()]
        last_update = {w.updates: i for i, w in enumerate(head) if w.updates is not None}
        refused: set[int] = set()  # groups whose run update changed nothing
        results: list[object] = [None] * len(head)
        order: Iterable[int] = range(len(head))
        if in_id_order:
            order = sorted(order, key=lambda i: (head[i].updates or "", i))
        with self._batch():
            for i in order:
                w = head[i]
                if w.caused and w.group in refused:
                    continue
                result = True if w.updates is not None and last_update[w.updates] != i else w.write()
                if (w.updates is not None or w.decides) and w.group and result is False:
                    refused.add(w.group)
                results[i] = result
        return results

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (bounded by `timeout_s`), then close the store."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("history writer still busy after %.0f s; %d writes lost", timeout_s, len(self._queue))
        self.store.close()
