"""Notifications, the delivering half: outbox rows out to webhooks and SMTP servers.

The `Deliverer` reads due rows from the outbox, renders each for its channel,
sends it (aiohttp for webhooks; smtplib on a thread of its own for email, so a
hung SMTP server never holds the event loop), and records the attempt: delivered,
or pending again after an exponential backoff, or failed once the channel's
`max_attempts` are used. A failed attempt is counted
(`supervise_notifications_failed_total`) and published as a
`notification_failed` event. Delivery is at least once: a supervisor killed
between a send and its record sends that row again after a restart, with the
same `X-Supervise-Notification-Id` header so a receiver can drop the repeat.

A webhook given through the HTTP API (a task's own, `WebhookChannel.guarded`)
goes through a session of its own that connects only to addresses the address
policy allows (`[supervisor] allow_addresses`, docs/security.md) and follows no
redirect, as the tasks' own calls do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from supervise.protocol.url_policy import AddressPolicy, UrlRefused, check_url, origin, refusal_error
from supervise.supervisor.config.notify import (
    Channel,
    EmailChannel,
    TlsMode,
    WebhookChannel,
    compile_template,
)
from supervise.supervisor.store.base import Notification, NotificationStore

if TYPE_CHECKING:
    from email.message import EmailMessage

    import aiohttp
    import jinja2

log = logging.getLogger("supervise.notify")

BATCH = 50  # rows read per pass; a pass sends them concurrently
SMTP_THREADS = 4  # SMTP sessions at once
LEASE_MARGIN_MS = 30_000  # a claimed row is not claimed again before its attempt's timeout plus this
SIGNATURE_HEADER = "X-Supervise-Signature"
TIMESTAMP_HEADER = "X-Supervise-Timestamp"
ID_HEADER = "X-Supervise-Notification-Id"
SLACK_TEXT = (
    "{% if event in ('recovered', 'success') %}:white_check_mark:{% else %}:rotating_light:{% endif %} "
    "*{{ summary }}*"
    "{% if error_lines or output_lines %}\n```{{ (error_lines + output_lines) | join('\n') }}```{% endif %}\n"
    "_{{ host }} · {{ time }} · `{{ command }}`_"
)

InStore = Callable[..., Awaitable[Any]]


class DeliveryError(Exception):
    """One attempt failed; `permanent` when trying again cannot help (a template error)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the HMAC-SHA256 of `timestamp + "." + body`."""
    import hashlib  # at the first signed webhook: `hashlib` and `hmac` initialise OpenSSL's digests
    import hmac

    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class Deliverer:
    """Sends what the outbox holds; one per supervisor, driven by the notifier's task.

    Args:
        channel: the channel a row goes to, by (service, channel name), as configured now
            (a reload may change it); None when there is no such channel any more.
        longest_timeout_ms: the longest `timeout` of the channels (claims outlast it).
        in_store: runs a store call off the event loop, in order with outbox writes.
        wall: the wall clock (row times are wall times).
        publish: emits an event (`notification_failed`, `notification_sent`).
        addresses: where a guarded webhook may connect (default: public addresses only).
    """

    def __init__(
        self,
        store: NotificationStore,
        *,
        channel: Callable[[str, str], Channel | None],
        longest_timeout_ms: Callable[[], int],
        in_store: InStore,
        wall: Callable[[], datetime],
        publish: Callable[[str, str, Mapping[str, object]], None],
        addresses: Callable[[], AddressPolicy] = AddressPolicy,
    ) -> None:
        self._store = store
        self._channel = channel
        self._longest_timeout_ms = longest_timeout_ms
        self._in_store = in_store
        self._wall = wall
        self._publish = publish
        self._wake = asyncio.Event()
        self._session: Any = None  # aiohttp.ClientSession, opened at the first webhook
        self._guarded: Any = None  # the session of guarded webhooks, and the policy it was made for
        self._guarded_policy: AddressPolicy | None = None
        self._addresses = addresses
        self._smtp = asyncio.Semaphore(SMTP_THREADS)
        self._templates: dict[str, jinja2.Template] = {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # attempts under way, by row id
        self.sent = 0
        self.failed = 0  # failed attempts
        self.given_up = 0  # rows that reached `failed`
        self.last_error: str | None = None

    async def close(self) -> None:
        """Stop the attempts under way (their rows are tried again after the lease) and the HTTP session."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in (self._session, self._guarded):
            if session is not None:
                await session.close()
        self._session = self._guarded = None

    def wake(self) -> None:
        """Look at the outbox now (a row was written)."""
        self._wake.set()

    async def wait(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            pass
        self._wake.clear()

    def counters(self) -> dict[str, object]:
        return {"sent": self.sent, "failed": self.failed, "given_up": self.given_up, "last_error": self.last_error}

    async def deliver_due(self) -> float | None:
        """Claim the rows due now and start one attempt for each, on tasks of their own.

        Returns the seconds until the soonest pending row is due (0 when more are due
        now), or None when nothing is pending or the store could not be read.
        """
        now = self._wall()
        until = now + timedelta(milliseconds=self._longest_timeout_ms() + LEASE_MARGIN_MS)
        try:
            soonest = await self._in_store(self._store.next_notification_at)  # a read: no write lock when idle
            if soonest is None:
                return None
            if soonest > now:
                return float((soonest - now).total_seconds())
            due = await self._in_store(self._store.claim_notifications, now, until, BATCH)
        except Exception as exc:  # the store is down: try again at the next tick
            log.error("cannot read the notifications outbox: %s", exc)
            return None
        for n in due:
            if n.id in self._in_flight:
                continue  # an attempt that outlived its lease: let it finish
            self._in_flight[n.id] = asyncio.create_task(self._attempt(n), name=f"supervise-notify-{n.id}")
        if len(due) == BATCH:
            self._wake.set()  # there may be more
        return None

    async def _attempt(self, n: Notification) -> None:
        try:
            await self._deliver(n)
        except Exception:
            log.exception("notification %s: delivery failed unexpectedly", n.id)
        finally:
            self._in_flight.pop(n.id, None)
            self._wake.set()  # its retry time (or the next row) decides the next pass

    async def _deliver(self, n: Notification) -> None:
        channel = self._channel(n.service, n.channel)
        error: DeliveryError | None = None
        if channel is None:
            error = DeliveryError(f'channel "{n.channel}" is no longer configured', permanent=True)
        else:
            try:
                if isinstance(channel, WebhookChannel):
                    await self._send_webhook(channel, n)
                else:
                    await self._send_email(channel, n)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:
                error = DeliveryError(f"{type(exc).__name__}: {exc}".strip())
        await self._record(n, channel, error)

    async def _record(self, n: Notification, channel: Channel | None, error: DeliveryError | None) -> None:
        now = self._wall()
        attempt = n.attempts + 1
        retry_at: datetime | None = None
        if error is not None and not error.permanent and channel is not None and attempt < channel.max_attempts:
            delay_ms = min(channel.backoff_max_ms, channel.backoff_ms * 2 ** (attempt - 1))
            retry_at = now + timedelta(milliseconds=delay_ms)
        message = None if error is None else str(error)[:1000]
        try:
            await self._in_store(self._store.record_attempt, n.id, at=now, error=message, retry_at=retry_at)
        except Exception as exc:
            log.error("notification %s: attempt %d not recorded: %s", n.id, attempt, exc)
        if error is None:
            self.sent += 1
            self._publish(n.service, "notification_sent", {"id": n.id, "channel": n.channel, "attempt": attempt})
            return
        self.failed += 1
        self.last_error = f"{n.channel}: {message}"
        final = retry_at is None
        self.given_up += final
        what = "given up" if retry_at is None else f"retrying at {retry_at.isoformat(timespec='seconds')}"
        log.warning("notification to %s failed (attempt %d, %s): %s", n.channel, attempt, what, message)
        detail = {"id": n.id, "channel": n.channel, "attempt": attempt, "error": message, "final": final}
        self._publish(n.service, "notification_failed", detail)

    # -- rendering -------------------------------------------------------------------------------

    def _render(self, source: str, payload: Mapping[str, Any]) -> str:
        template = self._templates.get(source)
        if template is None:
            try:
                template = self._templates[source] = compile_template(source)
            except ValueError as exc:
                raise DeliveryError(str(exc), permanent=True) from exc
        try:
            return template.render(payload)
        except Exception as exc:  # checked at load time, but a row may carry an unexpected value
            raise DeliveryError(f"template error: {exc}", permanent=True) from exc

    def webhook_body(self, channel: WebhookChannel, payload: Mapping[str, Any]) -> tuple[bytes, str]:
        """The request body and its default content type."""
        if channel.body is not None:
            return self._render(channel.body, payload).encode(), "application/json"
        if channel.preset == "slack":
            text = self._render(channel.text or SLACK_TEXT, payload)
            return json.dumps({"text": text}).encode(), "application/json"
        return json.dumps(dict(payload), default=str).encode(), "application/json"

    # -- senders ---------------------------------------------------------------------------------

    async def _send_webhook(self, channel: WebhookChannel, n: Notification) -> None:
        import aiohttp

        body, content_type = self.webhook_body(channel, n.payload)
        timestamp = str(int(time.time()))
        headers = {"Content-Type": content_type, "User-Agent": "supervise", **channel.headers}
        headers[TIMESTAMP_HEADER] = timestamp
        headers[ID_HEADER] = n.id
        if channel.secret:
            headers[SIGNATURE_HEADER] = sign(channel.secret, timestamp, body)
        if channel.guarded:
            session = await self._guarded_session(channel)
        else:
            if self._session is None:
                self._session = aiohttp.ClientSession()  # at the first webhook: aiohttp is slow to import
            session = self._session
        timeout = aiohttp.ClientTimeout(total=channel.timeout_ms / 1000)
        try:
            async with session.request(
                channel.method,
                channel.url,
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=not channel.guarded,
            ) as response:
                if response.status >= 300:
                    text = (await response.text(errors="replace"))[:200]
                    raise DeliveryError(f"HTTP {response.status}: {text}".strip())
        except (aiohttp.ClientError, TimeoutError, UrlRefused) as exc:
            if isinstance(exc.__cause__, UrlRefused):
                exc = exc.__cause__
            # Not the URL: a Slack-style URL is itself a secret, and errors are shown to read-only clients.
            raise DeliveryError(f"{type(exc).__name__}: {exc}".strip().replace(channel.url, "<url>")) from exc

    async def _guarded_session(self, channel: WebhookChannel) -> aiohttp.ClientSession:
        """The session of guarded webhooks (made again when the policy changed); refuses an IP-literal host
        outside the policy here, since no resolver sees it.

        Raises:
            DeliveryError: the URL or its address is refused (permanent: trying again cannot help).
        """
        import aiohttp

        policy = self._addresses()
        try:
            host, port = origin(check_url(channel.url))
            try:
                literal = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                literal = None
            reason = policy.refusal(literal, port) if literal is not None else None
            if reason is not None:
                raise refusal_error(host, port, [reason])
        except UrlRefused as exc:
            raise DeliveryError(f"refused: {exc}", permanent=True) from None
        if self._guarded is None or self._guarded_policy != policy:
            if self._guarded is not None:
                await self._guarded.close()
            from supervise.supervisor.daemon.guarded_resolver import PolicyResolver

            connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy))
            self._guarded = aiohttp.ClientSession(connector=connector, trust_env=False)
            self._guarded_policy = policy
        session: aiohttp.ClientSession = self._guarded
        return session

    async def _send_email(self, channel: EmailChannel, n: Notification) -> None:
        # At the first email: a daemon with no email channel never holds the email package and smtplib.
        import smtplib
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        subject = " ".join(self._render(channel.subject, n.payload).split())[:200]
        body = self._render(channel.body, n.payload) if channel.body is not None else str(n.payload.get("text", ""))
        message = EmailMessage()
        message["From"] = channel.sender
        message["To"] = ", ".join(channel.to)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=channel.sender.rpartition("@")[2] or None)
        message[ID_HEADER] = n.id
        message.set_content(body)
        try:
            async with self._smtp:
                await in_daemon_thread(send_smtp, channel, message)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {channel.host}:{channel.port}: {type(exc).__name__}: {exc}".strip()) from exc


async def in_daemon_thread(call: Callable[..., object], *args: object) -> None:
    """Run a blocking `call` on a daemon thread of its own and await it.

    Not an executor: a process exiting joins executor threads, and an SMTP server
    that never answers would hold the supervisor's exit for the whole timeout.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            call(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            error: BaseException | None = exc
        else:
            error = None
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop closed while the server kept us waiting
            pass

    threading.Thread(target=run, name="supervise-smtp", daemon=True).start()
    await done


def send_smtp(channel: EmailChannel, message: EmailMessage) -> None:
    """Send one message (blocking: called on the SMTP thread)."""
    import smtplib
    import ssl

    timeout = channel.timeout_ms / 1000
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if channel.tls is TlsMode.TLS:
        smtp = smtplib.SMTP_SSL(channel.host, channel.port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(channel.host, channel.port, timeout=timeout)
    with smtp:
        if channel.tls is TlsMode.STARTTLS:
            smtp.starttls(context=context)
        if channel.user is not None:
            smtp.login(channel.user, channel.password or "")
        smtp.send_message(message)
