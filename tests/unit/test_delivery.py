"""The pure parts of delivery: the signature, the Slack text, and what `status` shows of failures."""

from __future__ import annotations

import hashlib
import hmac

from supervise.supervisor.cli.render import status_table
from supervise.supervisor.config.notify import SAMPLE_MESSAGE, compile_template
from supervise.supervisor.daemon.delivery import SLACK_TEXT, sign


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"event":"failure"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", body) == "sha256=" + expected
    assert sign("k", "1700000001", body) != sign("k", "1700000000", body)  # a replayed body needs its timestamp


def test_the_slack_text_shows_the_summary_and_the_error_in_a_code_block() -> None:
    text = compile_template(SLACK_TEXT).render(SAMPLE_MESSAGE)
    assert text.startswith(":rotating_light: *report: run 0f3a failed*")
    assert "```exit status 1\nTraceback (most recent call last):\nOSError: disk full```" in text
    assert "supervise runs report" in text
    recovered = compile_template(SLACK_TEXT).render(
        {**SAMPLE_MESSAGE, "event": "recovered", "error_lines": [], "output_lines": []}
    )
    assert recovered.startswith(":white_check_mark:") and "```" not in recovered


def test_status_shows_a_line_when_notifications_fail() -> None:
    counters = {"sent": 3, "failed": 2, "given_up": 1, "last_error": "chat: HTTP 500"}
    result = {"services": [], "supervisor": {"healthy": True, "notifications": counters}}
    expected = "notifications: 3 sent, 2 failed attempts, 1 given up; last error: chat: HTTP 500"
    assert status_table(result).endswith(expected)
    quiet = {"services": [], "supervisor": {"healthy": True, "notifications": {**counters, "failed": 0}}}
    assert "notifications" not in status_table(quiet)
