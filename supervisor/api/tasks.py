"""The API's tasks: "call this URL at that datetime", each a one-shot run of a task service.

A task service (`api-tasks-[<tenant>-]r<retries>`) is an http service the API adds the
first time a tenant asks for tasks with that many retries; each task is one of its
one-shots, with the task's URL, method, headers and body as the run's overrides and the
task id in a header, so a task's runs are found among the service's. A task's view is
read from its runs; a task in a final state is kept in memory (it never changes again).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from supervise.supervisor.api.models import TASK_HEADER, Run, Task, TaskCreate, TaskList, TasksQuery
from supervise.supervisor.api.paging import decode_cursor, encode_cursor
from supervise.supervisor.api.ports import ApiHost, EventRing
from supervise.supervisor.api.server import PREFIX, ApiError, Call, Reply, not_found
from supervise.supervisor.api.store import ApiStore, TaskRow, TenantQuotas
from supervise.supervisor.api.task_notify import TaskNotifier
from supervise.supervisor.core.runs import FINAL, RunState
from supervise.supervisor.daemon.run_views import run_to_dict


class Core(Protocol):
    """What tasks need of the rest of the API (resources.py)."""

    host: ApiHost
    store: ApiStore
    events: EventRing
    max_pending_tasks: int

    async def command(self, command_name: str, /, **args: object) -> Any:
        """Run a control command exactly as the control socket would."""
        ...

    def quotas_of(self, tenant: str) -> TenantQuotas:
        """A tenant's own quotas."""
        ...

    def starting_run(self, call: Call) -> AbstractContextManager[None]:
        """A run started for `call`: counted against its tenant's runs per minute (429 past it)."""
        ...

    def route(self, service: str, tenant: str | None) -> None:
        """Before a service is added: its history goes to its tenant's own store."""
        ...

    def set_owner(self, service: str, tenant: str | None) -> None:
        """Record the tenant a service belongs to."""
        ...


RESERVED_PREFIX = "api-"  # the task services: created by the API itself
TASK_RUN_PAGE = 500  # runs of a task service read at a time to find a task's runs
PENDING_RECOUNT_S = 1.0
ENDED_TASKS_KEPT = 10_000
FINAL_TASK_STATES = frozenset(str(s) for s in FINAL)
RETRY_WAIT_AT_MOST = timedelta(minutes=6)  # the longest retry backoff of a task service, and some


class Tasks:
    """The handlers of `/tasks`; the rest of the API (quotas, commands, owners) through `core`."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self.host = core.host
        self.store = core.store
        self._task_services = asyncio.Lock()
        self._pending: dict[str | None, tuple[int, float]] = {}  # tenant -> (pending tasks, counted at)
        self._ended_tasks: dict[str, Task] = {}  # in insertion order: the oldest is dropped first
        self.notifier = TaskNotifier(core.host, core.store, self._task_view)
        core.events.listeners.append(self.notifier.observe)

    async def create_task(self, call: Call) -> Reply:
        body: TaskCreate = call.body
        if body.notify is not None:
            self._check_notify_targets(call, body.notify.to)
        service = await self._task_service(call.tenant, body.retries.max)
        pending = self._pending_tasks(call.tenant)
        own = self._core.quotas_of(call.tenant).max_pending_tasks if call.tenant is not None else None
        most = own or self._core.max_pending_tasks
        if pending >= most:
            raise ApiError(
                429,
                "Too Many Requests",
                f"the tenant has {pending} pending tasks, its quota is {most}; retry when some have run",
                headers={"Retry-After": "60"},
            )
        task_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        at = body.at if body.at is not None and body.at > now else now
        with self._core.starting_run(call):
            scheduled = await self._core.command(
                "schedule", name=service, at=at.isoformat(), args=body.run_args(task_id)
            )
        row = TaskRow(
            task_id,
            call.tenant,
            service,
            scheduled["id"],
            at.isoformat(),
            body.model_dump(mode="json"),
            time.time(),
            None,
        )
        self.store.add_task(row)
        if body.notify is not None:
            self.notifier.track(task_id)
        self._pending_changed(call.tenant, +1)
        return Reply(self._task(row), 201, {"Location": f"{PREFIX}/tasks/{task_id}"})

    def _check_notify_targets(self, call: Call, to: list[str]) -> None:
        """`notify.to` names the daemon's own channels: not for a tenant's token, and each must exist."""
        if not to:
            return
        if call.tenant is not None:
            raise ApiError(
                403,
                "Forbidden",
                "/notify/to: a tenant's token may not send to the daemon's channels; use notify.webhook",
            )
        defined = self.host.config.notify.channels
        unknown = [name for name in to if name not in defined]
        if unknown:
            known = ", ".join(sorted(defined)) or "none"
            detail = f'unknown channel "{unknown[0]}" (defined: {known})'
            raise ApiError(
                422, "Invalid request", f"/notify/to: {detail}", errors=[{"pointer": "/notify/to", "detail": detail}]
            )

    async def _task_service(self, tenant: str | None, retries: int) -> str:
        name = f"{RESERVED_PREFIX}tasks-{tenant}-r{retries}" if tenant else f"{RESERVED_PREFIX}tasks-r{retries}"
        async with self._task_services:
            if name not in self.host.service_names():
                table = {
                    "action": "http",
                    "url": "http://127.0.0.1:9/",  # every task brings its own
                    "manual": True,
                    "allow_run_overrides": ["url", "method", "headers", "body"],
                    "concurrency": 100,
                    "retries": {"max": retries, "backoff": "exponential", "initial": "1s", "max_delay": "5m"},
                }
                self._core.route(name, tenant)
                await self._core.command("add", name=name, spec=table)
                self._core.set_owner(name, tenant)
        return name

    def _pending_tasks(self, tenant: str | None) -> int:
        """A tenant's tasks waiting for their time: counted at most every PENDING_RECOUNT_S, tracked between."""
        now = time.monotonic()
        cached = self._pending.get(tenant)
        if cached is not None and now - cached[1] < PENDING_RECOUNT_S:
            return cached[0]
        store = self.host.store
        prefix = f"{RESERVED_PREFIX}tasks-{tenant}-r" if tenant else f"{RESERVED_PREFIX}tasks-r"
        services = [n for n in self.host.service_names() if n.startswith(prefix)]
        count = sum(store.count_runs(s, {RunState.PENDING}) for s in services) if store is not None else 0
        self._pending[tenant] = (count, now)
        return count

    def _pending_changed(self, tenant: str | None, delta: int) -> None:
        cached = self._pending.get(tenant)
        if cached is not None:
            self._pending[tenant] = (max(0, cached[0] + delta), cached[1])

    def _task(self, row: TaskRow) -> Task:
        """A task's view, with its notify rule's progress when it has one."""
        task = self._task_view(row)
        rule = row.request.get("notify")
        if not rule:
            return task
        found = self.store.task_notify_event(row.id)
        closed, event = found if found is not None else (True, None)
        hook = rule.get("webhook")
        notify = {
            "on": rule.get("on", []),
            "to": rule.get("to", []),
            "webhook": hook.get("url") if isinstance(hook, dict) else None,
            "state": "sent" if event else "not_sent" if closed else "waiting",
            "event": event,
        }
        return task.model_copy(update={"notify": notify})

    def _task_view(self, row: TaskRow) -> Task:
        request = row.request
        view: dict[str, Any] = {
            "id": row.id,
            "tenant": row.tenant,
            "at": row.at,
            "url": request["url"],
            "method": request["method"],
            "created_at": datetime.fromtimestamp(row.created_at, UTC).isoformat(),
        }
        if row.cancelled_at is not None:
            return Task.model_validate({**view, "state": "cancelled"})
        ended = self._ended_tasks.get(row.id)
        if ended is not None:
            return ended
        if datetime.fromisoformat(row.at) > datetime.now(UTC) + timedelta(seconds=1):
            return Task.model_validate({**view, "state": "scheduled"})  # its time has not come: no run to look for
        runs = self._task_runs(row)
        if runs:
            last = runs[0]
            view.update(
                state=_task_state(last, int(request.get("retries", {}).get("max", 0))),
                attempts=len(runs),
                run=Run.model_validate(run_to_dict(last)),
                result=last.result,
                error=_exception_text(last.error),
            )
            if view["state"] in FINAL_TASK_STATES:
                task = Task.model_validate(view)
                self._remember_ended(task)
                return task
        else:
            store = self.host.store
            run = store.get_run(row.oneshot_id) if store is not None else None
            waiting = run is None or run.state is RunState.PENDING  # None: its row is still being written
            view["state"] = "scheduled" if waiting else "starting"
        return Task.model_validate(view)

    def _remember_ended(self, task: Task) -> None:
        """A task in a final state never changes again: keep its view, the newest ENDED_TASKS_KEPT of them."""
        if len(self._ended_tasks) >= ENDED_TASKS_KEPT:
            del self._ended_tasks[next(iter(self._ended_tasks))]
        self._ended_tasks[task.id] = task

    def _task_runs(self, row: TaskRow) -> list[Any]:
        """The runs of a task, newest first (one per attempt)."""
        store = self.host.store
        if store is None:
            return []
        oldest = datetime.fromisoformat(row.at) - timedelta(seconds=1)  # a task's runs are created after its time
        found: list[Any] = []
        before = None
        while True:
            page = store.list_runs(row.service, limit=TASK_RUN_PAGE, before=before)
            found += [r for r in page if (r.args.get("headers") or {}).get(TASK_HEADER) == row.id]
            if len(page) < TASK_RUN_PAGE or page[-1].created_at < oldest:
                return found
            before = page[-1].created_at

    def _visible_task(self, call: Call) -> TaskRow:
        task_id = call.param("task_id")
        row = self.store.task(task_id)
        if row is None or (call.tenant is not None and row.tenant != call.tenant):
            raise not_found(f'task "{task_id}"')
        return row

    async def get_task(self, call: Call) -> Reply:
        return Reply(self._task(self._visible_task(call)))

    async def list_tasks(self, call: Call) -> Reply:
        query: TasksQuery = call.query
        before = decode_cursor(query.cursor).timestamp() if query.cursor else None
        rows = self.store.tasks(call.tenant, everyone=call.tenant is None, limit=query.limit + 1, before=before)
        page = rows[: query.limit]
        cursor = None
        if len(rows) > query.limit and page:
            cursor = encode_cursor(datetime.fromtimestamp(page[-1].created_at, UTC))
        return Reply(TaskList(tasks=[self._task(r) for r in page], next_cursor=cursor))

    async def cancel_task(self, call: Call) -> Reply:
        row = self._visible_task(call)
        if row.cancelled_at is not None:
            return Reply(self._task(row))
        scheduler = self.host.scheduler
        store = self.host.store
        if store is not None:
            await store.written()  # a task created a moment ago: its run's row is in the store to be found
        if scheduler is None or not scheduler.cancel_oneshot(row.oneshot_id):
            task = self._task(row)
            raise ApiError(
                409, "Conflict", f"task {row.id} is {task.state}: it has already started; cancel its run instead"
            )
        self.store.cancel_task(row.id)
        self.notifier.forget(row.id)
        self._pending_changed(row.tenant, -1)
        cancelled = self.store.task(row.id)
        assert cancelled is not None
        return Reply(self._task(cancelled))


def _exception_text(error: str | None) -> str | None:
    """The exception of a traceback without its frames (its message may span lines)."""
    if not error:
        return None
    lines = error.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
    return "\n".join(lines[frames[-1] + 1 :] if frames and frames[-1] + 1 < len(lines) else lines[-1:])


def _task_state(last: Any, retries: int) -> str:
    """The state of a task from its newest run: `retry_wait` while a retry is still to come."""
    retried = last.state in (RunState.FAILED, RunState.TIMED_OUT) and last.attempt <= retries
    recent = last.finished_at is not None and datetime.now(UTC) - last.finished_at < RETRY_WAIT_AT_MOST
    if retried and recent:
        return "retry_wait"
    return "scheduled" if last.state is RunState.PENDING else str(last.state)
