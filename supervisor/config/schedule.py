"""The scheduling keys of a service: its trigger, run arguments and policies.

A service with any trigger key (`every`, `cron`, `at`, `on_start`, `manual`) is
scheduled: each occurrence is a run. `parse_schedule` turns those keys into a
frozen `ScheduleConfig`; the key reference is docs/scheduling.md.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from supervise.protocol.url_policy import parse_allow_list
from supervise.supervisor.config.trigger_spec import (
    TRIGGER_KEYS,
    TriggerSpecError,
    parse_trigger,
)
from supervise.supervisor.core.policies import (
    Backoff,
    CatchupPolicy,
    OverlapPolicy,
    RetryPolicy,
)
from supervise.supervisor.core.triggers import Trigger
from supervise.supervisor.core.units import parse_duration_ms

KIND_KEYS: Final = frozenset({"every", "cron", "at", "on_start", "manual"})
POLICY_KEYS: Final = frozenset(
    {
        "args",
        "overlap",
        "max_concurrent",
        "buffer_limit",
        "catchup",
        "catchup_window",
        "max_catchup",
        "start_deadline",
        "jitter",
        "timeout",
        "cancel_grace",
        "retries",
        "isolation",
        "concurrency",
        "on_lost",
    }
)
HTTP_KEYS: Final = frozenset(
    {
        "action",
        "url",
        "method",
        "headers",
        "body",
        "expect_status",
        "request_timeout",
        "allow_run_overrides",
        "block_private_addresses",
        "allow_addresses",
    }
)
OVERRIDABLE: Final = ("url", "method", "headers", "body")
SCHEDULE_KEYS: Final = TRIGGER_KEYS | POLICY_KEYS | HTTP_KEYS
HTTP_TARGET: Final = "supervise.workers.http_action:call"
DEFAULT_CONCURRENCY: Final = 10  # runs at once per worker (per service for commands)
HTTP_CONCURRENCY: Final = 250  # the http action's calls are asynchronous: many at once cost no threads
# (250, not 100: a run handed over ahead of its time holds its slot meanwhile, and at 2 000 due a
# second 100 slots, doubled under on_lost = "retry", were at the edge; bench/README, 2026-12-08)
ON_LOST: Final = ("retry", "abandon")


@dataclass(frozen=True, slots=True)
class HttpActionPolicy:
    """What a run of an http action may change, and where it may connect (docs/security.md)."""

    allow_run_overrides: tuple[str, ...] = ()  # of OVERRIDABLE; the rest is the config's
    block_private_addresses: bool = True
    allow_addresses: tuple[str, ...] = ()  # validated by protocol.url_policy.parse_allow_list


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A scheduled service's trigger and run policies, validated."""

    trigger: Trigger
    spec: Mapping[str, object]  # the trigger keys as written, for `status` and reload diffs
    args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    max_concurrent: int | None = None  # None: 1 for every policy but allow_all (unlimited)
    buffer_limit: int = 100
    catchup: CatchupPolicy = CatchupPolicy.LATEST
    catchup_window_ms: int = 60_000
    max_catchup: int = 10
    start_deadline_ms: int | None = None
    jitter_ms: int = 0
    timeout_ms: int | None = None  # per run: cancel, then the worker is stopped after cancel_grace_ms
    cancel_grace_ms: int = 5_000
    retry: RetryPolicy | None = None
    isolation: str = "worker"  # Python targets: "worker" (warm, one process for all runs) | "process" (one per run)
    http: HttpActionPolicy | None = None  # set for action = "http"
    concurrency: int = DEFAULT_CONCURRENCY  # runs in flight at once; more wait in the queue (state queued)
    on_lost: str = "abandon"  # a started run whose worker was lost: "retry" (a new attempt, same key) | "abandon"

    @property
    def slots(self) -> int | None:
        if self.max_concurrent is not None:
            return self.max_concurrent
        return None if self.overlap is OverlapPolicy.ALLOW_ALL else 1


def is_scheduled(table: Mapping[str, object]) -> bool:
    return any(key in table for key in KIND_KEYS) or table.get("action") == "http"


def parse_schedule(name: str, table: Mapping[str, object]) -> tuple[ScheduleConfig | None, list[tuple[str, str]]]:
    """Read the scheduling keys of one service table.

    Returns:
        The schedule (None when there are problems) and `(key, problem)` pairs.
    """
    problems: list[tuple[str, str]] = []
    trigger_spec = {k: v for k, v in table.items() if k in TRIGGER_KEYS}
    if not any(k in trigger_spec for k in KIND_KEYS):
        trigger_spec["manual"] = True  # an http action without a trigger runs on demand
    trigger: Trigger | None = None
    try:
        trigger = parse_trigger(trigger_spec, schedule_id=name)
    except TriggerSpecError as e:
        problems += e.problems
    values: dict[str, Any] = {}

    def read(key: str, convert: Any, target: str | None = None) -> None:
        if key in table:
            try:
                values[target or key] = convert(table[key])
            except ValueError as e:
                problems.append((key, str(e)))

    read("args", _table)
    read("overlap", lambda v: _choice(v, OverlapPolicy))
    read("max_concurrent", _positive_int)
    read("buffer_limit", _positive_int)
    read("catchup", lambda v: _choice(v, CatchupPolicy))
    read("catchup_window", parse_duration_ms, "catchup_window_ms")
    read("max_catchup", _non_negative_int)
    read("start_deadline", parse_duration_ms, "start_deadline_ms")
    read("jitter", parse_duration_ms, "jitter_ms")
    read("timeout", parse_duration_ms, "timeout_ms")
    read("cancel_grace", parse_duration_ms, "cancel_grace_ms")
    read("retries", _retry, "retry")
    read("isolation", _isolation)
    read("concurrency", _positive_int)
    read("on_lost", _on_lost)
    http = table.get("action") == "http"
    values.setdefault("concurrency", HTTP_CONCURRENCY if http else DEFAULT_CONCURRENCY)
    values.setdefault("on_lost", "retry" if http or "retries" in table else "abandon")
    if table.get("action") is not None:
        problems += _check_http(table)
        values["http"] = _http_policy(table, problems)
    if problems or trigger is None:
        return None, problems
    if "args" in values:
        values["args"] = MappingProxyType(dict(values["args"]))
    return ScheduleConfig(trigger=trigger, spec=MappingProxyType(trigger_spec), **values), []


def http_args(table: Mapping[str, object]) -> dict[str, Any]:
    """The arguments of the built-in http action's target, from the service table."""
    status = table.get("expect_status", [200, 299])
    return {
        "url": table["url"],
        "method": table.get("method", "GET"),
        "headers": dict(table.get("headers", {})),  # type: ignore[call-overload]
        "body": table.get("body"),
        "expect_status": list(status) if isinstance(status, list) else [status, status],
        "timeout_s": parse_duration_ms(table.get("request_timeout", "30s")) / 1000,
    }


def _check_http(table: Mapping[str, object]) -> list[tuple[str, str]]:
    problems = []
    if table.get("action") != "http":
        problems.append(("action", f'expected "http", got {table.get("action")!r}'))
    args = table.get("args")
    urls = [("url", table.get("url"))]
    if isinstance(args, Mapping) and "url" in args:
        urls.append(("args", args["url"]))  # merged over `url`: the same rules
    for key, url in urls:
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            problems.append((key, "expected an http:// or https:// URL" + (" in args.url" if key == "args" else "")))
        elif "@" in urllib.parse.urlsplit(url).netloc:
            problems.append((key, "credentials in the URL (user:password@) are refused; send them in a header"))
    if "command" in table or "target" in table:
        problems.append(("action", "an http action has no command or target"))
    method = table.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}:
        problems.append(("method", f"expected an HTTP method, got {method!r}"))
    status = table.get("expect_status", [200, 299])
    ok = isinstance(status, int) or (
        isinstance(status, list) and len(status) == 2 and all(isinstance(s, int) for s in status)
    )
    if not ok:
        problems.append(("expect_status", "expected a status code or [low, high]"))
    headers = table.get("headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        problems.append(("headers", "expected a table of strings"))
    return problems


def _http_policy(table: Mapping[str, object], problems: list[tuple[str, str]]) -> HttpActionPolicy:
    overrides = table.get("allow_run_overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(k, str) and k in OVERRIDABLE for k in overrides):
        choices = ", ".join(f'"{k}"' for k in OVERRIDABLE)
        problems.append(("allow_run_overrides", f"expected a list of {choices}; got {overrides!r}"))
        overrides = []
    block = table.get("block_private_addresses", True)
    if not isinstance(block, bool):
        problems.append(("block_private_addresses", f"expected true or false, got {block!r}"))
        block = True
    allow = table.get("allow_addresses", [])
    try:
        parse_allow_list(allow)
    except ValueError as e:
        problems.append(("allow_addresses", str(e)))
        allow = []
    return HttpActionPolicy(tuple(overrides), block, tuple(allow))  # type: ignore[arg-type]


def _on_lost(value: object) -> str:
    if value not in ON_LOST:
        raise ValueError(
            f'expected "retry" (run it again, same idempotency key) or "abandon" (record it lost), got {value!r}'
        )
    return str(value)


def _isolation(value: object) -> str:
    if value not in ("worker", "process"):
        raise ValueError(f'expected "worker" or "process", got {value!r}')
    return str(value)


def _table(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table, got {type(value).__name__}")
    return value


def _choice(value: object, enum: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(f'"{m.value}"' for m in enum)
        raise ValueError(f"expected one of {choices}; got {value!r}") from None


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return value


def _non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def _retry(value: object) -> RetryPolicy:
    if not isinstance(value, Mapping):
        raise ValueError('expected a table like { max = 3, backoff = "exponential", initial = "1s" }')
    unknown = set(value) - {"max", "backoff", "initial", "max_delay", "retry_on_timeout"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: max, backoff, initial, max_delay, retry_on_timeout")
    on_timeout = value.get("retry_on_timeout", True)
    if not isinstance(on_timeout, bool):
        raise ValueError(f"retry_on_timeout: expected true or false, got {on_timeout!r}")
    return RetryPolicy(
        max=_non_negative_int(value.get("max", 3)),
        backoff=_choice(value.get("backoff", "exponential"), Backoff),
        initial_ms=parse_duration_ms(value.get("initial", "1s")),
        max_delay_ms=parse_duration_ms(value.get("max_delay", "5m")),
        retry_on_timeout=on_timeout,
    )
