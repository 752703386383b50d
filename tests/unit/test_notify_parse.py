"""sd_notify datagrams as KEY=VALUE fields."""

from __future__ import annotations

from supervise.supervisor.daemon.sd_notify import parse_notify


def test_lines_become_fields_and_values_may_hold_equals_signs() -> None:
    assert parse_notify(b"READY=1\nSTATUS=a=b c\nMAINPID=42\n") == {"READY": "1", "STATUS": "a=b c", "MAINPID": "42"}


def test_lines_without_a_key_or_an_equals_sign_are_ignored() -> None:
    assert parse_notify(b"garbage\n=1\n\nWATCHDOG=1") == {"WATCHDOG": "1"}


def test_invalid_utf8_does_not_raise() -> None:
    assert parse_notify(b"STATUS=\xff")["STATUS"] == "\ufffd"
