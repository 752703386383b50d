"""The [notify] tables: channels, rules and templates, and the config errors that name their key."""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from supervise.supervisor.config.loader import load_config, parse_config
from supervise.supervisor.config.notify import (
    SAMPLE_MESSAGE,
    EmailChannel,
    NotifyRule,
    TlsMode,
    WebhookChannel,
    compile_template,
)
from supervise.supervisor.core.errors import ConfigError


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "supervise.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [f"{p.key}: {p.problem}" for p in caught.value.problems]


def test_channels_and_rules_are_parsed(tmp_path: Path) -> None:
    config = parse_config(
        {
            "notify": {
                "default": {"on": ["failure", "fatal"], "to": ["ops"]},
                "ops": {"type": "webhook", "url": "https://hooks.example.com/x", "secret": "s3", "backoff": "1s"},
                "chat": {"type": "webhook", "preset": "slack", "url": "https://hooks.slack.com/services/T/B/X"},
                "mail": {
                    "type": "email",
                    "host": "smtp.example.com",
                    "tls": "tls",
                    "user": "u",
                    "password": "p",
                    "from": "supervise@example.com",
                    "to": "ops@example.com",
                    "subject": "{{ service }} {{ event }}",
                },
            },
            "services": {"a": {"command": "true", "notify": {"on": ["missed"], "to": ["mail"], "min_interval": "10m"}}},
        }
    )
    ops = config.notify.channels["ops"]
    assert isinstance(ops, WebhookChannel) and ops.secret == "s3" and ops.backoff_ms == 1000 and ops.method == "POST"
    mail = config.notify.channels["mail"]
    assert isinstance(mail, EmailChannel)
    assert (mail.port, mail.tls, mail.to) == (465, TlsMode.TLS, ("ops@example.com",))
    assert mail.sender == "supervise@example.com"
    assert config.notify.default == NotifyRule(on=("failure", "fatal"), to=("ops",))
    assert config.services["a"].notify == NotifyRule(on=("missed",), to=("mail",), min_interval_ms=600_000)


def test_without_a_notify_table_nothing_is_sent() -> None:
    config = parse_config({"services": {"a": {"command": "true"}}})
    assert config.notify.channels == {} and config.notify.default is None and config.services["a"].notify is None


def test_a_template_error_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
        [notify.ops]
        type = "webhook"
        url = "http://127.0.0.1:9/hook"
        body = "{{ service }} {{ nope }}"

        [notify.mail]
        type = "email"
        host = "localhost"
        from = "a@example.com"
        to = ["b@example.com"]
        subject = "{% if %}"
        """,
    )
    assert found[0].startswith("notify.ops.body: template error: 'nope' is undefined")
    assert found[1].startswith("notify.mail.subject: template error at line 1")


def test_the_sandbox_refuses_unsafe_templates(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
        [notify.ops]
        type = "webhook"
        url = "http://127.0.0.1:9/hook"
        body = "{{ service.__class__.__mro__ }}"
        """,
    )
    assert len(found) == 1 and "unsafe" in found[0] and found[0].startswith("notify.ops.body: template error")


def test_an_unknown_channel_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
        [notify]
        default = { to = ["pager"] }

        [notify.ops]
        type = "webhook"
        url = "http://127.0.0.1:9/hook"

        [services.a]
        command = "true"
        notify = { on = ["failure"], to = ["ops", "chat"] }
        """,
    )
    assert found == [
        'notify.default.to: unknown channel "pager" (defined: ops)',
        'services.a.notify.to: unknown channel "chat" (defined: ops)',
    ]


def test_bad_channel_and_rule_values_name_their_key(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
        [notify.ops]
        type = "webhook"
        url = "ftp://x"
        method = "DELETE"
        preset = "teams"

        [notify.mail]
        type = "email"
        tls = "ssl"
        to = []

        [notify.x]
        type = "pager"

        [services.a]
        command = "true"
        notify = { on = ["exploded"], to = ["ops"] }
        """,
    )
    keys = sorted(line.split(":", 1)[0] for line in found)
    assert keys == sorted(
        [
            "notify.ops.url",
            "notify.ops.method",
            "notify.ops.preset",
            "notify.mail.host",
            "notify.mail.tls",
            "notify.mail.from",
            "notify.mail.to",
            "notify.x.type",
            "services.a.notify",
        ]
    )
    assert 'unknown event "exploded"' in found[-1]


DOC = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_copy_paste_examples_of_the_docs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/x")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    slack, text, email = doc_blocks()[:3]
    for example in (slack, email):
        path = tmp_path / "supervise.toml"
        path.write_text(example)
        assert load_config(path).notify.channels
    channel = slack + text
    path = tmp_path / "supervise.toml"
    path.write_text(channel)
    assert load_config(path).notify.channels["slack"].text is not None  # type: ignore[union-attr]


def test_the_json_body_example_of_the_docs_renders_valid_json() -> None:
    (body,) = [b for b in doc_blocks() if b.startswith("body =")]
    source = tomllib.loads(body)["body"]
    template = compile_template(source)
    for event in ("failure", "recovered"):
        rendered = json.loads(template.render({**SAMPLE_MESSAGE, "event": event}))
        assert rendered["severity"] == ("info" if event == "recovered" else "error")


def test_a_rule_may_carry_its_own_webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_HOOK_SECRET", "s")
    (example,) = [b for b in doc_blocks() if "nightly-export" in b]
    path = tmp_path / "supervise.toml"
    path.write_text(example)
    rule = load_config(path).services["nightly-export"].notify
    assert rule is not None and rule.webhook is not None
    assert (rule.webhook.url, rule.webhook.secret) == ("https://ci.example.com/hooks/export", "s")
    assert rule.targets == ("webhook",)
    short = parse_config({"services": {"a": {"command": "true", "notify": {"webhook": "http://127.0.0.1:9/x"}}}})
    assert short.services["a"].notify.webhook.url == "http://127.0.0.1:9/x"  # type: ignore[union-attr]


def test_a_bad_own_webhook_and_a_channel_named_webhook_are_config_errors(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
        [notify.webhook]
        type = "webhook"
        url = "http://127.0.0.1:9/hook"

        [services.a]
        command = "true"
        notify = { webhook = { url = "ftp://x" } }
        """,
    )
    assert found[0].startswith("notify.webhook: channel names must match")
    assert found[1].startswith("services.a.notify: webhook.url: expected an http:// or https:// URL")
