"""The API's request and response bodies: pydantic models that validate and document.

The same classes validate what arrives (`model_validate_json`, extra keys
refused) and produce the OpenAPI document's schemas (`openapi.py`): there is
no second validation layer. A model's validators may call the config edge's
own parsers (a trigger, a duration) so that the API accepts exactly what a
config file accepts.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

SERVICE_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
Name = Annotated[str, Field(pattern=SERVICE_NAME, description="a service or job name", examples=["settle-merchants"])]
TASK_HEADER = "X-Supervise-Task"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", TASK_HEADER.lower()}
OVERLAP = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"]
RUN_STATES = Literal[
    "pending",
    "due",
    "buffered",
    "queued",
    "starting",
    "running",
    "succeeded",
    "failed",
    "retry_wait",
    "timed_out",
    "cancelled",
    "terminated",
    "lost",
    "skipped",
]


class Strict(BaseModel):
    """A request body: unknown keys are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """A response body that may grow new keys without a new API version."""

    model_config = ConfigDict(extra="allow")


# -- errors (RFC 9457) -------------------------------------------------------------------


class FieldProblem(Open):
    pointer: str = Field(description='JSON Pointer to the offending field, e.g. "/retries/max"')
    detail: str


class Problem(Open):
    """An error, as `application/problem+json`."""

    type: str = Field(default="about:blank")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = None


# -- services ---------------------------------------------------------------------------------


class ServiceCreate(Strict):
    """A long-running (or scheduled) service: `spec` has the keys of a `[services.NAME]` table."""

    name: Name
    spec: dict[str, Any] = Field(description="the keys of a [services.NAME] table, as in the config file")


class ServiceUpdate(Strict):
    spec: dict[str, Any] = Field(description="the whole [services.NAME] table that replaces the current one")


class ScaleRequest(Strict):
    processes: int = Field(ge=1, le=1000)


class LastExit(Open):
    cause: str
    code: int | None = None
    signal: int | None = None


class ServiceStatus(Open):
    name: str
    state: str
    pid: int | None = None
    restarts: int = 0
    tenant: str | None = None


class ServiceList(Open):
    services: list[ServiceStatus]


class ActionResult(Open):
    services: dict[str, str] = Field(description="each instance's state once the action is done")


class Logs(Open):
    lines: list[str]
    offset: int | None = None


# -- jobs -----------------------------------------------------------------------------------


class RetrySpec(Strict):
    max: int = Field(default=3, ge=0, le=100)
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    initial: str = Field(default="1s", description="a duration: 500ms, 1s, 2m ...")
    max_delay: str = Field(default="5m")


class _JobFields(Strict):
    command: list[str] | None = Field(default=None, min_length=1, description="an executable and its arguments")
    target: str | None = Field(default=None, description='a registered Python function, "pkg.module:function"')
    every: str | None = Field(default=None, description="an interval: 30s, 5m, 1h ...")
    cron: str | None = Field(default=None, description='a cron expression, "0 2 * * *"')
    timezone: str | None = Field(default=None, description="IANA zone of cron, e.g. Asia/Kolkata")
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    at: AwareDatetime | None = Field(default=None, description="one occurrence at this datetime")
    manual: bool | None = Field(default=None, description="no trigger: runs only when asked to")
    args: dict[str, Any] | None = Field(default=None, description="keyword arguments of every run")
    overlap: OVERLAP | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=10_000)
    timeout: str | None = Field(default=None, description="per run: 30s, 10m ...")
    jitter: str | None = None
    retries: RetrySpec | None = None
    env: dict[str, str] | None = None

    def table(self) -> dict[str, Any]:
        """The config table this job is: what `add` and `update` take."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump(exclude_none=True, mode="json").items():
            out[key] = value
        return out


def check_job_table(table: dict[str, Any]) -> None:
    """Rules across a job's keys: one of command/target, one trigger, and a trigger that fires."""
    from supervise.supervisor.config.trigger_spec import TRIGGER_KEYS, TriggerSpecError, parse_trigger

    if ("command" in table) == ("target" in table):
        raise ValueError("give exactly one of command (an executable) or target (a registered function)")
    kinds = [k for k in ("every", "cron", "at", "manual") if table.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise ValueError(f"give exactly one trigger of every, cron, at or manual; got {kinds or 'none'}")
    spec = {k: v for k, v in table.items() if k in TRIGGER_KEYS}
    try:
        trigger = parse_trigger(spec)
    except TriggerSpecError as e:
        raise ValueError("; ".join(f"{key}: {problem}" for key, problem in e.problems)) from None
    if (
        kinds[0] in ("every", "cron")
        and trigger.next_fire(datetime.now(UTC), runs_so_far=0, last_finished=None) is None
    ):
        raise ValueError(f"the trigger {trigger.describe()} never fires")


class JobCreate(_JobFields):
    """A scheduled service: a trigger, a target or command, and its arguments."""

    name: Name

    @model_validator(mode="after")
    def _whole(self) -> JobCreate:
        check_job_table(self.table())
        return self

    def table(self) -> dict[str, Any]:
        out = super().table()
        out.pop("name", None)
        return out


class JobPatch(_JobFields):
    """Keys to change; a trigger key given replaces the old trigger (pending occurrences are rescheduled)."""


class Job(Open):
    name: str
    tenant: str | None = None
    trigger: str
    paused: bool
    next_fire: str | None = None
    next_fires: list[str] = Field(default_factory=list, description="the next few fire times (none while paused)")
    running: int = 0
    buffered: int = 0
    runs_so_far: int = 0
    last_run: dict[str, Any] | None = None
    spec: dict[str, Any] | None = Field(default=None, description="the job's keys, when it was added at runtime")


class JobList(Open):
    jobs: list[Job]


class RunNowRequest(Strict):
    args: dict[str, Any] | None = Field(default=None, description="keyword arguments of this run only")


class RunStarted(Open):
    run_id: str
    state: str
    reason: str | None = None


class Skipping(Open):
    skipping: str | None = Field(description="the occurrence that will be skipped")


# -- runs -------------------------------------------------------------------------------------


class Run(Open):
    run_id: str
    service: str
    state: str
    reason: str | None = None
    origin: str
    attempt: int
    nominal_time: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    result: Any = None


class RunPage(Open):
    runs: list[Run]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null at the end")


class RunsQuery(Strict):
    job: Annotated[str, Field(pattern=SERVICE_NAME)] | None = None
    state: RUN_STATES | None = None
    since: AwareDatetime | None = Field(default=None, description="only runs created at or after this")
    until: AwareDatetime | None = Field(default=None, description="only runs created before this")
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200)


class Cancelled(Open):
    run_id: str
    state: str


# -- tasks ------------------------------------------------------------------------------------


class ExpectStatus(Strict):
    low: int = Field(default=200, ge=100, le=599)
    high: int = Field(default=299, ge=100, le=599)


class TaskRetries(Strict):
    max: int = Field(default=0, ge=0, le=5, description="attempts after the first one")


TaskEvent = Literal["success", "failure", "retries_exhausted", "timed_out", "lost", "missed"]
TASK_EVENTS: tuple[TaskEvent, ...] = ("success", "failure", "retries_exhausted", "timed_out", "lost", "missed")
_WEBHOOK_FORBIDDEN = {"host", "content-length", "transfer-encoding", "connection"}
CHANNEL_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


def check_call_url(url: str, info: ValidationInfo) -> str:
    """An http(s) URL to a host, without spaces or credentials, and not this daemon's own API."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https, got {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); send them in a header")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("has an invalid port") from None
    own = (info.context or {}).get("own_port")
    if own is not None and port == own and _is_local(parts.hostname, (info.context or {}).get("own_host")):
        raise ValueError("points at this daemon's own API")
    return url


def check_header_set(headers: dict[str, str], forbidden: set[str], prefix: str | None = None) -> dict[str, str]:
    """HTTP tokens as names, no line breaks or NUL in values, none of `forbidden` (or starting with `prefix`)."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name[:40]!r} is not a valid HTTP token")
        if name.lower() in forbidden or (prefix is not None and name.lower().startswith(prefix)):
            raise ValueError(f"header {name} is set by the daemon")
        if any(c in value for c in "\r\n\0") or len(value) > 8192:
            raise ValueError(f"header {name} has a line break, NUL or is over 8192 characters")
    return headers


class TaskWebhook(Strict):
    """Where a task's notification is sent: a POST of the message as JSON, signed when `secret` is set."""

    url: str = Field(max_length=2048, description="http:// or https://, under the address policy")
    secret: str | None = Field(
        default=None, min_length=16, max_length=256, description="HMAC-SHA256 key of X-Supervise-Signature"
    )
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str, info: ValidationInfo) -> str:
        return check_call_url(url, info)

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_header_set(headers, _WEBHOOK_FORBIDDEN, "x-supervise-")


class TaskNotify(Strict):
    """Tell someone when the task has run: its own webhook, the daemon's channels, or both."""

    on: list[TaskEvent] = Field(
        default_factory=lambda: list(TASK_EVENTS),
        max_length=len(TASK_EVENTS),
        description="the outcomes to send; one message when the task ends, never one per attempt",
    )
    to: list[Annotated[str, Field(pattern=CHANNEL_NAME)]] = Field(
        default_factory=list, max_length=10, description="[notify.NAME] channels of the daemon (no tenant only)"
    )
    webhook: TaskWebhook | None = Field(
        default=None, description='the task\'s own webhook; a bare URL string stands for {"url": URL}'
    )

    @field_validator("webhook", mode="before")
    @classmethod
    def _webhook(cls, value: object) -> object:
        return {"url": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _somewhere(self) -> TaskNotify:
        if not self.to and self.webhook is None:
            raise ValueError("give webhook, to, or both")
        return self


class TaskCreate(Strict):
    """Call a URL once, at a datetime (or now)."""

    url: str = Field(max_length=2048, description="http:// or https://, not this daemon's own API")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    body: str | dict[str, Any] | list[Any] | None = Field(
        default=None, description="a string as is; an object or array is sent as JSON"
    )
    at: AwareDatetime | None = Field(default=None, description="when; omitted or in the past: as soon as possible")
    timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds the call may take")
    retries: TaskRetries = Field(default_factory=TaskRetries)
    expect_status: ExpectStatus = Field(default_factory=ExpectStatus)
    notify: TaskNotify | None = Field(default=None, description="who to tell when the task has run")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str, info: ValidationInfo) -> str:
        return check_call_url(url, info)

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_header_set(headers, _FORBIDDEN_HEADERS)

    @model_validator(mode="after")
    def _status_range(self) -> TaskCreate:
        if self.expect_status.low > self.expect_status.high:
            raise ValueError("expect_status: low must be <= high")
        return self

    def run_args(self, task_id: str) -> dict[str, Any]:
        """The http action's arguments for this task's run."""
        headers = {**self.headers, TASK_HEADER: task_id}
        body = self.body
        if body is not None and not isinstance(body, str):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        return {
            "url": self.url,
            "method": self.method,
            "headers": headers,
            "body": body,
            "expect_status": [self.expect_status.low, self.expect_status.high],
            "timeout_s": self.timeout,
        }


def _is_local(host: str, own_host: str | None) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host == own_host:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


class Task(Open):
    id: str
    tenant: str | None = None
    state: str = Field(
        description="scheduled, then the state of its run (running, succeeded, failed ...), or cancelled"
    )
    at: str
    url: str
    method: str
    created_at: str
    attempts: int = 0
    run: Run | None = None
    result: Any = None
    error: str | None = None
    notify: dict[str, Any] | None = Field(
        default=None, description="its notify rule (the webhook's URL, never its secret) and whether it was sent"
    )


class TaskList(Open):
    tasks: list[Task]
    next_cursor: str | None = None


class TasksQuery(Strict):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200)


class LogsQuery(Strict):
    lines: int = Field(default=100, ge=0, le=10_000)


class EventsQuery(Strict):
    since: int | None = Field(default=None, ge=0, description="resume after this sequence number")
    service: Annotated[str, Field(pattern=SERVICE_NAME)] | None = None
    follow: bool = Field(default=True, description="false: send what is kept, then end")


class Ping(Open):
    version: str
    pid: int


# -- cluster ----------------------------------------------------------------------------------


class ClusterLeader(Open):
    node: str
    epoch: int


class ClusterNode(Open):
    name: str
    host: str | None = None
    pid: int | None = None
    state: str = Field(description="live, left, lost, or expired (its heartbeat is older than the lease)")
    alive: bool = Field(description="state is live: the node renewed its heartbeat within the lease")
    started_at: str | None = None
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat, on the database clock")
    runs_held: int = Field(description="in-flight runs whose lease it holds")
    singletons_held: list[str] = Field(description='singleton copies it holds, as "service#slot"')


class ClusterPlacement(Open):
    name: str
    slot: int
    holder: str
    epoch: int
    live: bool = Field(description="false: the copy is free; holder is who held it last")
    expires_in_s: float


class ClusterView(Open):
    """Cluster mode (docs/cluster.md); only `enabled` when this daemon has no [cluster] table."""

    enabled: bool
    node: str | None = Field(default=None, description="this daemon's node name")
    leader: ClusterLeader | None = Field(default=None, description="the maintenance leader; null when none is live")
    database_time: str | None = None
    nodes: list[ClusterNode] = Field(default_factory=list)
    placements: list[ClusterPlacement] = Field(default_factory=list)
