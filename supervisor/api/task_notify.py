"""A task's `notify`: one message when the task has run, through the notifications outbox.

A task created with `notify` is *open* in `api.db` (`task_notify`) until its
message is in the outbox. When a run of a task service finishes (or is skipped
as missed), the run's task is looked up; once the task is in a final state its
outcome (`success`, `failure`, `retries_exhausted`, `timed_out`, `lost`,
`missed`) is sent if the rule's `on` names it, to the task's own webhook
(channel `task:<id>`, resolved here from the stored task, signed with its
secret) and to the daemon's `[notify.NAME]` channels of `to`. The rows go
through the notifier's outbox, with its retries, backoff and dedup: a row's id
is `task:<id>|<event>|<channel>`, so a fact is written once, however often it
is seen. A daemon restarted before a finished task's message was written
writes it at start (`sweep`). The no-storm gate does not apply: each task is
its own fact, sent once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from supervise.supervisor.api.models import TASK_HEADER, Task
from supervise.supervisor.api.store import ApiStore, TaskRow
from supervise.supervisor.config.notify import Channel, WebhookChannel

if TYPE_CHECKING:
    import concurrent.futures

    from supervise.supervisor.api.ports import ApiHost

log = logging.getLogger("supervise.api")

CHANNEL_PREFIX = "task"  # a task's own webhook is the outbox channel "task:<task id>"
TASK_SERVICE_PREFIX = "api-tasks-"
_FINAL_EVENTS: Mapping[str, str] = {
    "succeeded": "success",
    "timed_out": "timed_out",
    "lost": "lost",
    "skipped": "missed",
}
_SILENT_END = frozenset({"cancelled", "terminated"})  # ended by someone's request: nothing to tell


class TaskOutbox(Protocol):
    """What a task's notification needs of the notifier (daemon/notifier.py)."""

    channel_sources: dict[str, Callable[[str], Channel | None]]

    def enqueue(
        self, payload: dict[str, Any], channels: tuple[str, ...], fact: str
    ) -> concurrent.futures.Future[None]: ...


def task_event(task: Task, retries: int) -> str | None:
    """The notification event of a task in a final state; None for one that ended by request."""
    if task.state == "failed":
        return "retries_exhausted" if retries > 0 else "failure"
    return _FINAL_EVENTS.get(task.state)


class TaskNotifier:
    """Watches task runs and writes each task's one message to the outbox.

    Args:
        host: the daemon (its run history and config).
        store: the API's store (tasks, and which notifications are still open).
        view: a task's current view (state, attempts, result), as GET /tasks/{id} shows it.
    """

    def __init__(self, host: ApiHost, store: ApiStore, view: Callable[[TaskRow], Task]) -> None:
        self._host = host
        self._store = store
        self._view = view
        self._open = set(store.open_task_notifies())
        self._outbox: TaskOutbox | None = None
        self._hostname = socket.gethostname()
        self._checks: set[asyncio.Task[None]] = set()

    def attach(self, outbox: TaskOutbox) -> None:
        """The notifier exists: register the task channels, then write what a stopped daemon left unwritten."""
        self._outbox = outbox
        outbox.channel_sources[CHANNEL_PREFIX] = self.channel
        if self._open:
            self._spawn(self.sweep())

    def close(self) -> None:
        for check in self._checks:
            check.cancel()
        self._outbox = None

    def track(self, task_id: str) -> None:
        """A new task with a notify rule."""
        self._store.open_task_notify(task_id)
        self._open.add(task_id)

    def forget(self, task_id: str) -> None:
        """The task was cancelled before it ran: nothing will be sent."""
        if task_id in self._open:
            self._open.discard(task_id)
            self._store.close_task_notify(task_id, None)

    # -- events in -------------------------------------------------------------------------------

    def observe(self, service: str, kind: str, detail: Mapping[str, object]) -> None:
        """An events listener: a task service's run ended (or was skipped); never raises."""
        if not self._open or self._outbox is None or not service.startswith(TASK_SERVICE_PREFIX):
            return
        if kind not in ("run_finished", "run_skipped"):
            return
        run_id = detail.get("run_id")
        if isinstance(run_id, str):
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # published off the event loop: the restart sweep will see the task
                log.warning("task notification for run %s deferred to the next start", run_id)
                return
            self._spawn(self._run_ended(run_id))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _run_ended(self, run_id: str) -> None:
        store = self._host.store
        if store is None:
            return
        try:
            await store.written()  # the run's final state (and a retry's row) are in the store
            run = store.get_run(run_id)
            task_id = (run.args.get("headers") or {}).get(TASK_HEADER) if run is not None else None
            if isinstance(task_id, str) and task_id in self._open:
                await self._settle(task_id)
        except Exception:  # a notification problem must not reach the scheduler that published the event
            log.exception("task notification for run %s failed", run_id)

    async def sweep(self) -> None:
        """Settle every open task that has already ended (after a restart)."""
        store = self._host.store
        if store is not None:
            await store.written()
        for task_id in sorted(self._open):
            try:
                await self._settle(task_id)
            except Exception:
                log.exception("task notification of %s failed", task_id)

    async def _settle(self, task_id: str) -> None:
        """Write the task's message if it has ended; close it either way once it has."""
        row = self._store.task(task_id)
        if row is None or row.cancelled_at is not None:
            self.forget(task_id)
            return
        task = self._view(row)
        rule = row.request.get("notify") or {}
        event = task_event(task, int(row.request.get("retries", {}).get("max", 0)))
        if task.state in _SILENT_END:
            self.forget(task_id)
            return
        if event is None or task_id not in self._open:
            return  # still to run, running, or waiting for a retry
        outbox = self._outbox
        if outbox is None:
            return
        self._open.discard(task_id)  # from here, one writer: a second event for it changes nothing
        sent: str | None = None
        if event in rule.get("on", ()):
            targets = tuple(rule.get("to") or ()) + ((f"{CHANNEL_PREFIX}:{task_id}",) if rule.get("webhook") else ())
            known = self._host.config.notify.channels
            targets = tuple(t for t in targets if t.startswith(f"{CHANNEL_PREFIX}:") or t in known)
            if targets:
                try:
                    written = outbox.enqueue(self.payload(row, task, event), targets, f"task:{task_id}")
                except RuntimeError:  # the notifier has closed (the daemon is stopping): the next start sends it
                    self._open.add(task_id)
                    return
                await asyncio.wrap_future(written)
                sent = event
        self._store.close_task_notify(task_id, sent)

    # -- what is sent, and where -------------------------------------------------------------------

    def channel(self, task_id: str) -> Channel | None:
        """The webhook of channel `task:<task_id>`, from the stored task; None when it has none."""
        row = self._store.task(task_id)
        hook = (row.request.get("notify") or {}).get("webhook") if row is not None else None
        if not isinstance(hook, dict):
            return None
        return WebhookChannel(
            name=f"{CHANNEL_PREFIX}:{task_id}",
            url=hook["url"],
            headers=dict(hook.get("headers") or {}),
            secret=hook.get("secret"),
            guarded=True,
        )

    def payload(self, row: TaskRow, task: Task, event: str) -> dict[str, Any]:
        """The message: the template variables of every notification, and the task under `task`."""
        run = task.run
        status = task.result.get("status") if isinstance(task.result, dict) else None
        how = {
            "success": f"succeeded (HTTP {status})" if status is not None else "succeeded",
            "failure": "failed",
            "retries_exhausted": f"failed after {task.attempts} attempts",
            "timed_out": "timed out",
            "lost": "was lost",
            "missed": "missed its time",
        }[event]
        error = task.error or ""
        summary = f"task {row.id[:12]}: {task.method} {task.url} {how}"
        return {
            "service": row.service,
            "event": event,
            "summary": summary,
            "error": error or None,
            "error_lines": error.splitlines()[:10],
            "output_lines": [],
            "run_id": run.run_id if run is not None else None,
            "state": task.state,
            "attempt": run.attempt if run is not None else None,
            "incarnation": None,
            "count": 1,
            "counts": {event: 1},
            "digest": False,
            "time": datetime.now(UTC).isoformat(),
            "since": None,
            "host": self._hostname,
            "command": f"GET /api/v1/tasks/{row.id}",
            "detail": {"task_id": row.id, "tenant": row.tenant, "url": task.url, "http_status": status},
            "task": {
                "id": row.id,
                "tenant": row.tenant,
                "url": task.url,
                "method": task.method,
                "at": task.at,
                "state": task.state,
                "attempts": task.attempts,
                "result": task.result,
                "error": task.error,
            },
        }
