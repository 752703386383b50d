"""The `[notify]` tables: channels (webhook, email), rules, and their templates.

```toml
[notify]
default = { on = ["failure", "fatal", "recovered"], to = ["ops"] }

[notify.ops]            # a channel: type = "webhook" or "email"
type = "webhook"
url = "https://hooks.example.com/supervise"
secret = "${NOTIFY_SECRET}"

[services.report]
notify = { on = ["failure", "missed"], to = ["ops"], min_interval = "10m" }
```

Templates are Jinja2 in a `SandboxedEnvironment` with strict undefined
variables: each is compiled and rendered once against a sample message at load
time, so a syntax error or an unknown variable is a config error naming its key.
The reference is docs/notifications.md.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from supervise.supervisor.core.units import parse_duration_ms, show_value, type_name

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "CHANNEL_NAME",
    "DEFAULT_MIN_INTERVAL_MS",
    "EVENTS",
    "INLINE",
    "EmailChannel",
    "NotifyConfig",
    "NotifyRule",
    "SAMPLE_MESSAGE",
    "TlsMode",
    "WebhookChannel",
    "check_targets",
    "compile_template",
    "declared_channels",
    "parse_notify",
    "parse_rule",
]

EVENTS: Final = ("failure", "retries_exhausted", "timed_out", "lost", "missed", "fatal", "recovered", "success")
"""What a rule's `on` may name."""

DEFAULT_MIN_INTERVAL_MS: Final = 5 * 60_000
DEFAULT_ON: Final = ("failure", "retries_exhausted", "timed_out", "lost", "missed", "fatal", "recovered")
CHANNEL_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
INLINE: Final = "webhook"  # the channel name of a rule's own webhook, in the outbox (unique per service)
_RESERVED: Final = frozenset({"default"})  # and INLINE

SAMPLE_MESSAGE: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "id": "report|run:0f3a|failure|ops",
        "service": "report",
        "event": "failure",
        "summary": "report: run 0f3a failed",
        "text": "report: run 0f3a failed\nerror: exit status 1",
        "error": "exit status 1",
        "error_lines": ["exit status 1"],
        "output_lines": ["Traceback (most recent call last):", "OSError: disk full"],
        "run_id": "0f3a",
        "state": "failed",
        "attempt": 1,
        "incarnation": 1,
        "count": 1,
        "counts": {"failure": 1},
        "digest": False,
        "time": "2026-01-01T00:00:00+00:00",
        "since": None,
        "host": "host.example.com",
        "command": "supervise runs report",
        "detail": {},
    }
)
"""The variables a template sees, with sample values; templates are checked against it."""


@cache
def _environment() -> jinja2.Environment:
    """The sandbox templates are compiled in; Jinja2 is imported only by a config that has templates."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def compile_template(source: str) -> jinja2.Template:
    """A sandboxed template, checked by rendering it against `SAMPLE_MESSAGE`.

    Raises:
        ValueError: with the template's problem (syntax, an unknown variable, a forbidden operation).
    """
    import jinja2

    try:
        template = _environment().from_string(source)
        template.render(SAMPLE_MESSAGE)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template error at line {exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        known = ", ".join(SAMPLE_MESSAGE)
        raise ValueError(f"template error: {exc.message} (variables: {known})") from exc
    except jinja2.TemplateError as exc:
        raise ValueError(f"template error: {exc}") from exc
    except Exception as exc:  # a sandbox refusal or a runtime error (1/0) in the template
        raise ValueError(f"template error: {type(exc).__name__}: {exc}") from exc
    return template


class TlsMode(StrEnum):
    """How an email channel secures its SMTP connection (key `tls`)."""

    STARTTLS = "starttls"  # plain connect, then STARTTLS (port 587)
    TLS = "tls"  # TLS from the first byte (port 465)
    NONE = "none"  # no encryption: a local relay only


@dataclass(frozen=True, slots=True)
class NotifyRule:
    """When to notify and whom: a service's `notify` key, or `[notify] default`."""

    on: tuple[str, ...] = DEFAULT_ON
    to: tuple[str, ...] = ()
    min_interval_ms: int = DEFAULT_MIN_INTERVAL_MS  # at most one digest per this, per service and rule
    webhook: WebhookChannel | None = None  # a service's own webhook (key webhook), besides `to`

    @property
    def targets(self) -> tuple[str, ...]:
        """The channel names messages go to: `to`, and `INLINE` for the rule's own webhook."""
        return self.to + ((INLINE,) if self.webhook is not None else ())


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """How hard a channel tries: attempts, and the exponential backoff between them."""

    max_attempts: int = 10
    backoff_ms: int = 2_000  # before the 2nd attempt; doubles each time
    backoff_max_ms: int = 300_000
    timeout_ms: int = 10_000  # one attempt: connect + send + answer


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookChannel(Delivery):
    """`type = "webhook"`: an HTTP request per message, HMAC-signed when `secret` is set."""

    name: str
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    body: str | None = None  # a template; None: the message as JSON (or Slack's shape with preset)
    secret: str | None = None
    preset: str | None = None  # "slack"
    text: str | None = None  # the Slack preset's text template
    guarded: bool = False  # given through the HTTP API: connects only where the address policy allows

    @property
    def kind(self) -> str:
        return "webhook"


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailChannel(Delivery):
    """`type = "email"`: a plain-text email per message over SMTP."""

    name: str
    host: str
    port: int
    tls: TlsMode = TlsMode.STARTTLS
    user: str | None = None
    password: str | None = None
    sender: str  # key `from`
    to: tuple[str, ...]
    subject: str = "[supervise] {{ summary }}"
    body: str | None = None  # a template; None: the built-in plain-text body

    @property
    def kind(self) -> str:
        return "email"


Channel = WebhookChannel | EmailChannel


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """The `[notify]` table: channels by name and the default rule (None: notify only where a service says)."""

    channels: Mapping[str, Channel] = field(default_factory=lambda: MappingProxyType({}))
    default: NotifyRule | None = None


# -- parsing ------------------------------------------------------------------------------------

Problems = list[tuple[tuple[str, ...], str]]


def parse_rule(value: object) -> NotifyRule:
    """A `notify = { on = [...], to = [...], min_interval = "5m" }` value (channel names checked later).

    Raises:
        ValueError: naming the sub-key at fault.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f'expected a table like {{ on = ["failure"], to = ["ops"] }}, got {type_name(value)}')
    unknown = [k for k in value if k not in ("on", "to", "min_interval", "webhook")]
    if unknown:
        raise ValueError(f'unknown key "{unknown[0]}" (expected on, to, min_interval, webhook)')
    on = value.get("on", list(DEFAULT_ON))
    if not isinstance(on, list) or not all(isinstance(e, str) for e in on):
        raise ValueError(f"on: expected a list of event names, got {show_value(on)}")
    for event in on:
        if event not in EVENTS:
            raise ValueError(f'on: unknown event "{event}" (expected some of {", ".join(EVENTS)})')
    to = value.get("to", [])
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not all(isinstance(c, str) for c in to):
        raise ValueError(f'to: expected a list of channel names like ["ops"], got {show_value(to)}')
    interval = DEFAULT_MIN_INTERVAL_MS
    if "min_interval" in value:
        try:
            interval = parse_duration_ms(value["min_interval"])
        except ValueError as exc:
            raise ValueError(f"min_interval: {exc}") from exc
    webhook = _inline_webhook(value["webhook"]) if "webhook" in value else None
    return NotifyRule(
        on=tuple(dict.fromkeys(on)), to=tuple(dict.fromkeys(to)), min_interval_ms=interval, webhook=webhook
    )


def _inline_webhook(value: object) -> WebhookChannel:
    """A rule's own webhook: a URL, or a table of the webhook channel keys (`type` implied)."""
    table = {"url": value} if isinstance(value, str) else value
    if not isinstance(table, Mapping):
        example = '{ url = "https://...", secret = "..." }'
        raise ValueError(f"webhook: expected a URL or a table like {example}, got {type_name(value)}")
    problems: Problems = []
    channel = _parse_channel(INLINE, {"type": "webhook", **table}, ("webhook",), problems)
    if channel is None or problems:
        path, message = problems[0]
        raise ValueError(f"{'.'.join(path)}: {message}")
    assert isinstance(channel, WebhookChannel)
    return channel


def parse_notify(table: object, problems: Problems) -> NotifyConfig:
    """The top-level `[notify]` table; problems are appended as (key path, message)."""
    path = ("notify",)
    if not isinstance(table, Mapping):
        problems.append((path, f"expected a table of [notify.NAME] channels, got {type_name(table)}"))
        return NotifyConfig()
    default: NotifyRule | None = None
    channels: dict[str, Channel] = {}
    for name, value in table.items():
        if name == "default":
            try:
                default = parse_rule(value)
            except ValueError as exc:
                problems.append(((*path, "default"), str(exc)))
            continue
        if not CHANNEL_NAME.fullmatch(name) or name in _RESERVED or name == INLINE:
            problems.append(
                ((*path, name), f'channel names must match {CHANNEL_NAME.pattern}, and not be "default" or "{INLINE}"')
            )
            continue
        channel = _parse_channel(name, value, (*path, name), problems)
        if channel is not None:
            channels[name] = channel
    if default is not None:
        problems.extend(check_targets(default, declared_channels(table), (*path, "default", "to")))
    return NotifyConfig(MappingProxyType(channels), default)


def declared_channels(table: object) -> tuple[str, ...]:
    """The channel names a `[notify]` table declares, valid or not (so a broken one is not also "unknown")."""
    return tuple(str(k) for k in table if k != "default") if isinstance(table, Mapping) else ()


def check_targets(rule: NotifyRule, channels: Collection[str], path: tuple[str, ...]) -> Problems:
    """A problem for each channel `rule` names that `[notify]` does not define."""
    defined = ", ".join(sorted(channels)) or "none: add a [notify.NAME] table"
    return [(path, f'unknown channel "{name}" (defined: {defined})') for name in rule.to if name not in channels]


_COMMON_KEYS: Final = ("type", "max_attempts", "backoff", "backoff_max", "timeout")
_WEBHOOK_KEYS: Final = ("url", "method", "headers", "body", "secret", "preset", "text")
_EMAIL_KEYS: Final = ("host", "port", "tls", "user", "password", "from", "to", "subject", "body")
_METHODS: Final = ("POST", "PUT", "PATCH")


def _parse_channel(name: str, table: object, path: tuple[str, ...], problems: Problems) -> Channel | None:
    if not isinstance(table, Mapping):
        problems.append((path, f"expected a [notify.{name}] table, got {type_name(table)}"))
        return None
    kind = table.get("type")
    if kind not in ("webhook", "email"):
        problems.append(((*path, "type"), f'expected "webhook" or "email", got {show_value(kind)}'))
        return None
    allowed = _COMMON_KEYS + (_WEBHOOK_KEYS if kind == "webhook" else _EMAIL_KEYS)
    before = len(problems)
    for key in table:
        if key not in allowed:
            problems.append(((*path, key), f"unknown key for a {kind} channel (expected one of {', '.join(allowed)})"))
    values: dict[str, Any] = {"name": name}
    _delivery(table, path, values, problems)
    if kind == "webhook":
        _webhook(table, path, values, problems)
    else:
        _email(table, path, values, problems)
    if len(problems) > before:
        return None
    return WebhookChannel(**values) if kind == "webhook" else EmailChannel(**values)


def _delivery(table: Mapping[str, Any], path: tuple[str, ...], values: dict[str, Any], problems: Problems) -> None:
    if "max_attempts" in table:
        n = table["max_attempts"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100:
            problems.append(((*path, "max_attempts"), f"expected an integer from 1 to 100, got {show_value(n)}"))
        else:
            values["max_attempts"] = n
    for key, name in (("backoff", "backoff_ms"), ("backoff_max", "backoff_max_ms"), ("timeout", "timeout_ms")):
        if key in table:
            try:
                ms = parse_duration_ms(table[key])
            except ValueError as exc:
                problems.append(((*path, key), str(exc)))
                continue
            if ms == 0 and key == "timeout":
                problems.append(((*path, key), "expected a duration > 0"))
                continue
            values[name] = ms


def _template(table: Mapping[str, Any], key: str, path: tuple[str, ...], problems: Problems) -> str | None:
    source = table.get(key)
    if source is None:
        return None
    if not isinstance(source, str):
        problems.append(((*path, key), f"expected a template string, got {type_name(source)}"))
        return None
    try:
        compile_template(source)
    except ValueError as exc:
        problems.append(((*path, key), str(exc)))
        return None
    return source


def _string(table: Mapping[str, Any], key: str, path: tuple[str, ...], problems: Problems) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        problems.append(((*path, key), f"expected a non-empty string, got {show_value(value)}"))
        return None
    return value


def _webhook(table: Mapping[str, Any], path: tuple[str, ...], values: dict[str, Any], problems: Problems) -> None:
    url = table.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
        problems.append(((*path, "url"), f"expected an http:// or https:// URL, got {show_value(url)}"))
    else:
        values["url"] = url
    method = table.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        problems.append(((*path, "method"), f"expected one of {', '.join(_METHODS)}, got {show_value(method)}"))
    else:
        values["method"] = method.upper()
    headers = table.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and "\n" not in v for k, v in headers.items()
    ):
        problems.append(((*path, "headers"), 'expected a table of strings like { Authorization = "Bearer ..." }'))
    else:
        values["headers"] = MappingProxyType(dict(headers))
    preset = table.get("preset")
    if preset is not None and preset != "slack":
        problems.append(((*path, "preset"), f'expected "slack", got {show_value(preset)}'))
    values["preset"] = preset
    if "text" in table and preset != "slack":
        problems.append(((*path, "text"), 'applies to preset = "slack" (use body for other receivers)'))
    for key in ("body", "text"):
        values[key] = _template(table, key, path, problems)
    values["secret"] = _string(table, "secret", path, problems)


def _email(table: Mapping[str, Any], path: tuple[str, ...], values: dict[str, Any], problems: Problems) -> None:
    host = _string(table, "host", path, problems)
    if host is None and "host" not in table:
        problems.append(((*path, "host"), "required: the SMTP server's host name"))
    values["host"] = host
    tls_value = table.get("tls", "starttls")
    if tls_value not in TlsMode._value2member_map_:
        problems.append(((*path, "tls"), f'expected "starttls", "tls" or "none", got {show_value(tls_value)}'))
        tls = TlsMode.STARTTLS
    else:
        tls = TlsMode(tls_value)
    values["tls"] = tls
    port = table.get("port", {TlsMode.STARTTLS: 587, TlsMode.TLS: 465, TlsMode.NONE: 25}[tls])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(((*path, "port"), f"expected a port from 1 to 65535, got {show_value(port)}"))
    values["port"] = port
    values["user"] = _string(table, "user", path, problems)
    values["password"] = _string(table, "password", path, problems)
    if values["password"] is not None and values["user"] is None:
        problems.append(((*path, "password"), "needs user"))
    sender = _string(table, "from", path, problems)
    if sender is None and "from" not in table:
        problems.append(((*path, "from"), 'required: the sender address, like "supervise@example.com"'))
    values["sender"] = sender
    to = table.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and "@" in a for a in to):
        problems.append(((*path, "to"), f'expected a list of addresses like ["ops@example.com"], got {show_value(to)}'))
    else:
        values["to"] = tuple(to)
    subject = _template(table, "subject", path, problems)
    if subject is not None:
        values["subject"] = subject
    values["body"] = _template(table, "body", path, problems)
