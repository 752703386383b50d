"""The resources of `/api/v1`: services, jobs, runs, events, and the route table (tasks: tasks.py).

Every action goes through the control commands (`daemon/commands.py`, looked up
with `resolve`, the same handlers and argument checks as the ZeroMQ socket);
only paging reads the run history directly. A token with a tenant sees only
what belongs to its tenant (`owners`); anything else answers 404, as if it did
not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from supervise.supervisor.api.models import (
    ActionResult,
    Cancelled,
    EventsQuery,
    Job,
    JobCreate,
    JobList,
    JobPatch,
    Logs,
    LogsQuery,
    Run,
    RunNowRequest,
    RunPage,
    RunsQuery,
    RunStarted,
    ScaleRequest,
    ServiceCreate,
    ServiceList,
    ServiceUpdate,
    Skipping,
    Task,
    TaskCreate,
    TaskList,
    TasksQuery,
    check_job_table,
)
from supervise.supervisor.api.paging import decode_cursor, encode_cursor
from supervise.supervisor.api.ports import ApiHost, EventRing
from supervise.supervisor.api.quota import RunQuota
from supervise.supervisor.api.server import PREFIX, ApiError, Call, Reply, Route, not_found, wait_event
from supervise.supervisor.api.store import ApiStore, Role, TenantQuotas
from supervise.supervisor.api.tasks import PENDING_RECOUNT_S, RESERVED_PREFIX, Tasks
from supervise.supervisor.core.errors import ServiceNotFound
from supervise.supervisor.core.runs import RunState
from supervise.supervisor.daemon.commands import resolve
from supervise.supervisor.daemon.http_guard import IDLE_TIMEOUT_S
from supervise.supervisor.daemon.run_views import run_to_dict
from supervise.supervisor.store.routed import RoutedStore

TRIGGER_KINDS = ("every", "cron", "at", "manual")
RUN_ID = r"[0-9a-f]{32}"
TASK_ID = r"[0-9a-f]{32}"
NAME = r"[a-z][a-z0-9_-]{0,62}"
SSE_KEEPALIVE_S = IDLE_TIMEOUT_S / 2  # a quiet stream writes a comment before the HTTP guard calls it idle
TENANT_FORBIDDEN_KEYS = ("command", "user", "cwd", "requires")
UNROUTE_WAIT_S = 5.0  # a removed service's queued history writes, written before its route is dropped


class Resources:
    """The handlers; `routes()` is the table the pipeline serves and openapi.py documents."""

    def __init__(
        self,
        host: ApiHost,
        store: ApiStore,
        events: EventRing,
        *,
        max_pending_tasks: int,
        max_runs_per_minute: int = 600,
    ) -> None:
        self.host = host
        self.store = store
        self.events = events
        self.max_pending_tasks = max_pending_tasks
        self.run_quota = RunQuota(max_runs_per_minute)
        self._own_quotas: tuple[dict[str, TenantQuotas], float] = ({}, float("-inf"))  # (quotas, read at)
        self._owners = store.owners()
        self._wake = asyncio.Event()
        self.closing = asyncio.Event()
        events.listeners.append(self._on_event)
        self.tasks = Tasks(self)

    # -- helpers ---------------------------------------------------------------------------------

    async def command(self, command_name: str, /, **args: object) -> Any:
        """Run a control command exactly as the control socket would."""
        command, valid = resolve(command_name, {k: v for k, v in args.items() if v is not None})
        return await command.handler(self.host, valid)

    def owner(self, service: str) -> str | None:
        name = service.split(":")[0]
        routes = self._cluster_routes()
        return routes.owner(name) if routes is not None else self._owners.get(name)

    def _cluster_routes(self) -> RoutedStore | None:
        """Cluster mode: the run store, whose owners are the registrations' tenants (the same on
        every node); None otherwise (this daemon's `api.db` says)."""
        store = self.host.store
        history = store.store if store is not None else None
        return history if isinstance(history, RoutedStore) and history.cluster_owners else None

    def visible(self, call: Call, service: str) -> bool:
        return call.tenant is None or self.owner(service) == call.tenant

    def require_visible(self, call: Call, name: str, what: str = "service") -> str:
        try:
            self.host.require(name)
        except ServiceNotFound:
            raise not_found(f'{what} "{name}"') from None
        if not self.visible(call, name):
            raise not_found(f'{what} "{name}"')
        return name

    @contextlib.contextmanager
    def starting_run(self, call: Call) -> Iterator[None]:
        """A tenant's token starts a run (a task, run now, retry): counted against its runs per minute.

        Raises:
            ApiError: 429 with Retry-After when the tenant is over `tenant_max_runs_per_minute`.
        """
        tenant = call.tenant
        if tenant is None:  # no tenant: the daemon's own operators, no quota
            yield
            return
        limit = self.quotas_of(tenant).max_runs_per_minute or self.run_quota.limit
        wait = self.run_quota.take(tenant, time.monotonic(), limit)
        if wait is not None:
            raise ApiError(
                429,
                "Too Many Requests",
                f"the tenant started {limit} runs in the last minute, its quota"
                f" (tenant_max_runs_per_minute, or its own: supervise tenant quota); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        try:
            yield
        except BaseException:
            self.run_quota.give_back(tenant)  # refused or failed: no run was started
            raise

    def quotas_of(self, tenant: str) -> TenantQuotas:
        """A tenant's own quotas (`supervise tenant quota`), read again at most every PENDING_RECOUNT_S."""
        quotas, read_at = self._own_quotas
        now = time.monotonic()
        if now - read_at >= PENDING_RECOUNT_S:
            quotas = self.store.quotas()
            self._own_quotas = (quotas, now)
        return quotas.get(tenant, TenantQuotas())

    def route(self, service: str, tenant: str | None) -> None:
        """Before a service is added: its history goes to its tenant's own store (store/routed.py)."""
        history = self.host.store.store if self.host.store is not None else None
        if isinstance(history, RoutedStore):
            history.assign(service, tenant)

    async def unroute(self, service: str) -> None:
        """After a service was removed, and the writes about it queued before were written: a service
        of that name added later (through the control socket too) starts in the daemon's own store."""
        store = self.host.store
        if store is not None and isinstance(store.store, RoutedStore):
            if not await store.written(UNROUTE_WAIT_S):
                return  # writes about it still queued must reach its tenant's store: keep the route
            store.store.assign(service, None)

    def set_owner(self, service: str, tenant: str | None) -> None:
        self.store.set_owner(service, tenant)
        if tenant is None:
            self._owners.pop(service, None)
        else:
            self._owners[service] = tenant

    def close(self) -> None:
        """End every event stream (the server is shutting down)."""
        self.closing.set()
        self._on_event("", "", None)
        self.tasks.notifier.close()

    def _on_event(self, service: str, kind: str, detail: object) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    # -- services --------------------------------------------------------------------------------

    async def list_services(self, call: Call) -> Reply:
        rows = [self._with_tenant(r) for r in self._rows(None) if self.visible(call, r["name"])]
        return Reply(ServiceList.model_validate({"services": rows}))

    def _with_tenant(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "tenant": self.owner(row["name"])}

    async def get_service(self, call: Call) -> Reply:
        name = self.require_visible(call, call.param("name"))
        rows = [self._with_tenant(r) for r in self._rows(name)]
        return Reply(ServiceList.model_validate({"services": rows}))

    def _rows(self, name: str | None) -> list[dict[str, Any]]:
        services = self.host.status(name, detail=name is not None)["services"]
        assert isinstance(services, list)
        return services

    async def create_service(self, call: Call) -> Reply:
        body: ServiceCreate = call.body
        self._check_new_name(call, body.name)
        check_tenant_spec(call, body.spec, "/spec")
        self.route(body.name, call.tenant)
        result = await self.command("add", name=body.name, spec=body.spec)
        self.set_owner(body.name, call.tenant)
        return Reply(result, 201, {"Location": f"{PREFIX}/services/{body.name}"})

    def _check_new_name(self, call: Call, name: str) -> None:
        if name.startswith(RESERVED_PREFIX):
            raise ApiError(
                422,
                "Invalid request",
                f'/name: names starting with "{RESERVED_PREFIX}" are reserved',
                errors=[{"pointer": "/name", "detail": f'names starting with "{RESERVED_PREFIX}" are reserved'}],
            )
        if name in self.host.service_names():
            raise ApiError(409, "Conflict", f'the name "{name}" is taken; choose another')

    async def update_service(self, call: Call) -> Reply:
        name = self.require_visible(call, call.param("name"))
        body: ServiceUpdate = call.body
        check_tenant_spec(call, body.spec, "/spec")
        return Reply(await self.command("update", name=name, spec=body.spec))

    async def delete_service(self, call: Call) -> Reply:
        name = self.require_visible(call, call.param("name"))
        result = await self.command("remove", name=name)
        self.set_owner(name, None)
        await self.unroute(name)
        return Reply(result)

    def service_action(self, action: str) -> Any:
        async def handler(call: Call) -> Reply:
            name = self.require_visible(call, call.param("name"))
            return Reply(ActionResult.model_validate(await self.command(action, name=name)))

        return handler

    async def scale_service(self, call: Call) -> Reply:
        name = self.require_visible(call, call.param("name"))
        body: ScaleRequest = call.body
        return Reply(await self.command("scale", name=name, processes=body.processes))

    async def service_logs(self, call: Call) -> Reply:
        name = self.require_visible(call, call.param("name"))
        query: LogsQuery = call.query
        found = await self.command("logs", name=name, lines=query.lines)
        return Reply(Logs(lines=found["lines"], offset=found["offset"]))

    # -- jobs ------------------------------------------------------------------------------------

    def _job(self, name: str) -> Job:
        scheduler = self.host.scheduler
        described = scheduler.describe(name) if scheduler is not None else None
        if described is None:
            raise not_found(f'job "{name}"')
        spec = self._registration(name)
        return Job(name=name, tenant=self.owner(name), spec=spec, **described)  # type: ignore[arg-type]

    def _registration(self, name: str) -> dict[str, Any] | None:
        store = self.host.store
        return store.list_registrations().get(name) if store is not None else None

    def _job_names(self, call: Call) -> list[str]:
        scheduler = self.host.scheduler
        if scheduler is None:
            return []
        return [n for n in self.host.service_names() if scheduler.has(n) and self.visible(call, n)]

    async def list_jobs(self, call: Call) -> Reply:
        return Reply(JobList(jobs=[self._job(n) for n in self._job_names(call)]))

    def _require_job(self, call: Call) -> str:
        name = call.param("name")
        if name not in self._job_names(call):
            raise not_found(f'job "{name}"')
        return name

    async def get_job(self, call: Call) -> Reply:
        return Reply(self._job(self._require_job(call)))

    async def create_job(self, call: Call) -> Reply:
        body: JobCreate = call.body
        self._check_new_name(call, body.name)
        check_tenant_spec(call, body.table(), "")
        self.route(body.name, call.tenant)
        await self.command("add", name=body.name, spec=body.table())
        self.set_owner(body.name, call.tenant)
        return Reply(self._job(body.name), 201, {"Location": f"{PREFIX}/jobs/{body.name}"})

    async def patch_job(self, call: Call) -> Reply:
        name = self._require_job(call)
        body: JobPatch = call.body
        old = self._registration(name)
        if old is None:
            raise ApiError(409, "Conflict", f'job "{name}" is declared in the config file; change it there and reload')
        patch = body.model_dump(exclude_unset=True, mode="json")
        table = dict(old)
        if any(k in patch for k in TRIGGER_KINDS):
            for kind in TRIGGER_KINDS:
                table.pop(kind, None)
        if "command" in patch:
            table.pop("target", None)
        if "target" in patch:
            table.pop("command", None)
        for key, value in patch.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        try:
            check_job_table(table)
        except ValueError as e:
            raise ApiError(422, "Invalid request", str(e), errors=[{"pointer": "/", "detail": str(e)}]) from None
        check_tenant_spec(call, table, "")
        await self.command("update", name=name, spec=table)
        return Reply(self._job(name))

    async def delete_job(self, call: Call) -> Reply:
        name = self._require_job(call)
        result = await self.command("remove", name=name)
        self.set_owner(name, None)
        await self.unroute(name)
        return Reply(result)

    def job_pause(self, action: str) -> Any:
        async def handler(call: Call) -> Reply:
            name = self._require_job(call)
            await self.command(action, name=name)
            return Reply(self._job(name))

        return handler

    async def job_run(self, call: Call) -> Reply:
        name = self._require_job(call)
        body: RunNowRequest = call.body
        with self.starting_run(call):
            started = await self.command("run", name=name, args=body.args)
        return Reply(RunStarted.model_validate(started), 202, {"Location": f"{PREFIX}/runs/{started['run_id']}"})

    async def job_skip(self, call: Call) -> Reply:
        name = self._require_job(call)
        return Reply(Skipping.model_validate(await self.command("skip", name=name)))

    # -- runs ------------------------------------------------------------------------------------

    async def list_runs(self, call: Call) -> Reply:
        query: RunsQuery = call.query
        store = self.host.store
        if store is None:
            return Reply(RunPage(runs=[], next_cursor=None))
        if query.job is not None and not (query.job in self.host.service_names() and self.visible(call, query.job)):
            raise not_found(f'job "{query.job}"')
        before = decode_cursor(query.cursor) if query.cursor else query.until
        states = {RunState(query.state)} if query.state else None
        services: list[str | None] = (
            [query.job] if query.job else ([None] if call.tenant is None else self._tenant_services(call))
        )
        found = []
        for service in services:
            found += store.list_runs(service, states=states, limit=query.limit + 1, before=before)
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        if query.since is not None:
            found = [r for r in found if r.created_at >= query.since]
        page = found[: query.limit]
        more = len(found) > query.limit
        cursor = encode_cursor(page[-1].created_at) if more and page else None
        return Reply(RunPage(runs=[Run.model_validate(run_to_dict(r)) for r in page], next_cursor=cursor))

    def _tenant_services(self, call: Call) -> list[str | None]:
        routes = self._cluster_routes()
        if routes is not None and call.tenant is not None:
            return list(routes.owned_by(call.tenant))
        return [s for s, t in self._owners.items() if t == call.tenant]

    def _visible_run(self, call: Call) -> Any:
        run_id = call.param("run_id")
        store = self.host.store
        run = store.get_run(run_id) if store is not None else None
        if run is None or not self.visible(call, run.service):
            raise not_found(f'run "{run_id}"')
        return run

    async def get_run(self, call: Call) -> Reply:
        return Reply(Run.model_validate(run_to_dict(self._visible_run(call))))

    async def cancel_run(self, call: Call) -> Reply:
        run = self._visible_run(call)
        return Reply(Cancelled.model_validate(await self.command("cancel", run_id=run.run_id)))

    async def retry_run(self, call: Call) -> Reply:
        run = self._visible_run(call)
        if run.state not in (
            RunState.FAILED,
            RunState.TIMED_OUT,
            RunState.LOST,
            RunState.CANCELLED,
            RunState.TERMINATED,
        ):
            raise ApiError(
                409,
                "Conflict",
                f"run {run.run_id} is {run.state}; only a failed, timed out, lost, cancelled or terminated run"
                " is retried",
            )
        with self.starting_run(call):
            started = await self.command("run", name=run.service, args=dict(run.args))
        return Reply(RunStarted.model_validate(started), 202, {"Location": f"{PREFIX}/runs/{started['run_id']}"})

    # -- events ----------------------------------------------------------------------------------

    async def stream_events(self, call: Call) -> web.StreamResponse:
        query: EventsQuery = call.query
        if query.service is not None and not (
            query.service in self.host.service_names() and self.visible(call, query.service)
        ):
            raise not_found(f'service "{query.service}"')
        seq = self._resume_from(call.request.headers.get("Last-Event-ID"), query.since)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(call.request)
        first = True
        while not self.closing.is_set():
            wake = self._wake
            got = self.events.since(seq, service=query.service, limit=1000)
            if first and got["missed"]:
                await response.write(_sse("missed", {"missed": got["missed"]}, None))
            first = False
            for event in got["events"]:
                seq = event["seq"]
                if self.visible(call, event["service"]):
                    await response.write(_sse(event["kind"], event, f"{self.events.instance}:{seq}"))
            if got["more"]:
                continue
            if not query.follow:
                break
            if not await wait_event(wake, SSE_KEEPALIVE_S):
                await response.write(b": keep-alive\n\n")
        return response

    def _resume_from(self, last_event_id: str | None, since: int | None) -> int:
        if last_event_id:
            instance, _, number = last_event_id.partition(":")
            if instance == self.events.instance and number.isdigit():
                return int(number)
            return 0  # another supervisor's numbering, or garbage: replay what is kept
        return since if since is not None else self.events.seq

    # -- the table ------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        V, OP, A = Role.VIEWER, Role.OPERATOR, Role.ADMIN
        name = {"name": NAME}
        out = [
            Route(
                "GET",
                "/services",
                self.list_services,
                V,
                "List services and their state",
                "services",
                response=ServiceList,
            ),
            Route(
                "POST",
                "/services",
                self.create_service,
                A,
                "Add a service",
                "services",
                body=ServiceCreate,
                status=201,
                errors=(409, 422),
            ),
            Route(
                "GET",
                "/services/{name}",
                self.get_service,
                V,
                "A service's instances, in detail",
                "services",
                response=ServiceList,
                errors=(404,),
                path_patterns=name,
            ),
            Route(
                "PUT",
                "/services/{name}",
                self.update_service,
                A,
                "Replace a service's settings",
                "services",
                body=ServiceUpdate,
                errors=(404, 409, 422),
                path_patterns=name,
            ),
            Route(
                "DELETE",
                "/services/{name}",
                self.delete_service,
                A,
                "Stop and remove a service",
                "services",
                errors=(404, 409),
                path_patterns=name,
            ),
            Route(
                "POST",
                "/services/{name}/scale",
                self.scale_service,
                A,
                "Run N processes of a service",
                "services",
                body=ScaleRequest,
                errors=(404, 409, 422),
                path_patterns=name,
            ),
            Route(
                "GET",
                "/services/{name}/logs",
                self.service_logs,
                V,
                "The last lines of a service's output",
                "services",
                query=LogsQuery,
                response=Logs,
                errors=(404,),
                path_patterns=name,
            ),
        ]
        for action in ("start", "stop", "restart", "pause", "resume"):
            out.append(
                Route(
                    "POST",
                    f"/services/{{name}}/{action}",
                    self.service_action(action),
                    OP,
                    f"{action.capitalize()} a service",
                    "services",
                    response=ActionResult,
                    errors=(404, 409),
                    path_patterns=name,
                )
            )
        out += [
            Route("GET", "/jobs", self.list_jobs, V, "List scheduled services", "jobs", response=JobList),
            Route(
                "POST",
                "/jobs",
                self.create_job,
                A,
                "Add a scheduled service",
                "jobs",
                body=JobCreate,
                response=Job,
                status=201,
                errors=(409, 422),
            ),
            Route(
                "GET",
                "/jobs/{name}",
                self.get_job,
                V,
                "A job: trigger, next fire, last run",
                "jobs",
                response=Job,
                errors=(404,),
                path_patterns=name,
            ),
            Route(
                "PATCH",
                "/jobs/{name}",
                self.patch_job,
                A,
                "Change a job (a new trigger reschedules it)",
                "jobs",
                body=JobPatch,
                response=Job,
                errors=(404, 409, 422),
                path_patterns=name,
            ),
            Route(
                "DELETE",
                "/jobs/{name}",
                self.delete_job,
                A,
                "Remove a job",
                "jobs",
                errors=(404, 409),
                path_patterns=name,
            ),
            Route(
                "POST",
                "/jobs/{name}/pause",
                self.job_pause("pause"),
                OP,
                "Stop firing a job",
                "jobs",
                response=Job,
                errors=(404,),
                path_patterns=name,
            ),
            Route(
                "POST",
                "/jobs/{name}/resume",
                self.job_pause("resume"),
                OP,
                "Fire a job again, from now on",
                "jobs",
                response=Job,
                errors=(404,),
                path_patterns=name,
            ),
            Route(
                "POST",
                "/jobs/{name}/run",
                self.job_run,
                OP,
                "Run a job now",
                "jobs",
                body=RunNowRequest,
                response=RunStarted,
                status=202,
                errors=(404, 409, 422, 429),
                path_patterns=name,
            ),
            Route(
                "POST",
                "/jobs/{name}/skip",
                self.job_skip,
                OP,
                "Skip a job's next occurrence",
                "jobs",
                response=Skipping,
                errors=(404,),
                path_patterns=name,
            ),
            Route(
                "GET",
                "/runs",
                self.list_runs,
                V,
                "Run history, newest first, a page at a time",
                "runs",
                query=RunsQuery,
                response=RunPage,
                errors=(404,),
            ),
            Route(
                "GET",
                "/runs/{run_id}",
                self.get_run,
                V,
                "One run",
                "runs",
                response=Run,
                errors=(404,),
                path_patterns={"run_id": RUN_ID},
            ),
            Route(
                "POST",
                "/runs/{run_id}/cancel",
                self.cancel_run,
                OP,
                "Cancel a run",
                "runs",
                response=Cancelled,
                errors=(404, 409),
                path_patterns={"run_id": RUN_ID},
            ),
            Route(
                "POST",
                "/runs/{run_id}/retry",
                self.retry_run,
                OP,
                "Run a failed run's job again with its arguments",
                "runs",
                response=RunStarted,
                status=202,
                errors=(404, 409, 429),
                path_patterns={"run_id": RUN_ID},
            ),
            Route(
                "POST",
                "/tasks",
                self.tasks.create_task,
                OP,
                "Call a URL at a datetime",
                "tasks",
                body=TaskCreate,
                response=Task,
                status=201,
                errors=(422, 429),
            ),
            Route(
                "GET",
                "/tasks",
                self.tasks.list_tasks,
                V,
                "Tasks, newest first",
                "tasks",
                query=TasksQuery,
                response=TaskList,
            ),
            Route(
                "GET",
                "/tasks/{task_id}",
                self.tasks.get_task,
                V,
                "A task: its state and result",
                "tasks",
                response=Task,
                errors=(404,),
                path_patterns={"task_id": TASK_ID},
            ),
            Route(
                "DELETE",
                "/tasks/{task_id}",
                self.tasks.cancel_task,
                OP,
                "Cancel a task that has not started",
                "tasks",
                response=Task,
                errors=(404, 409),
                path_patterns={"task_id": TASK_ID},
            ),
            Route(
                "GET",
                "/events",
                self.stream_events,
                V,
                "Server-Sent Events, resumable with Last-Event-ID",
                "events",
                query=EventsQuery,
                errors=(404,),
                stream=True,
            ),
        ]
        return out


def check_tenant_spec(call: Call, table: dict[str, Any], where: str) -> None:
    """A tenant's token runs only registered jobs: no commands, users, directories or dependencies of its own."""
    if call.tenant is None:
        return
    for key in TENANT_FORBIDDEN_KEYS:
        if key in table:
            raise ApiError(403, "Forbidden", f"{where}/{key}: a tenant's token may not set {key}; use a registered job")
    target = table.get("target")
    if target is not None and "@" not in str(target):
        raise ApiError(
            403,
            "Forbidden",
            f'{where}/target: a tenant\'s token names a registered job, "package.module@job-name", not {target!r}',
        )


def _sse(kind: str, data: object, event_id: str | None) -> bytes:
    lines = [f"event: {kind}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, default=str, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()
