"""Cron expressions as systemd OnCalendar= values, checked against systemd-analyze where it is installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from supervise.supervisor.export.oncalendar import CronNotTranslatable, cron_to_oncalendar

TRANSLATED = [
    ("30 2 * * 1-5", None, "Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00"),
    ("*/15 * * * *", None, "*-*-* *:00,15,30,45:00"),
    ("0 0 1 * *", "Europe/Paris", "*-*-01 00:00:00 Europe/Paris"),
    ("0 9-17/4 * JAN,jul sun", None, "Sun *-01,07-* 09,13,17:00:00"),
    ("5 4 * * 7", None, "Sun *-*-* 04:05:00"),
    ("@daily", "UTC", "daily UTC"),
    ("@hourly", None, "hourly"),
]


@pytest.mark.parametrize(("cron", "zone", "expected"), TRANSLATED)
def test_standard_cron_translates(cron: str, zone: str | None, expected: str) -> None:
    assert cron_to_oncalendar(cron, zone) == expected


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_every_translation() -> None:
    values = [expected for _, _, expected in TRANSLATED]
    result = subprocess.run(["systemd-analyze", "calendar", *values], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("cron", "reason"),
    [
        ("0 0 L * *", 'cron day of month "L": "L" has no OnCalendar= equivalent'),
        ("0 0 1 * 1", "restricts both day of month and day of week: cron runs when either matches"),
        ("0 0 * * 1#2", 'cron day of week "1#2"'),
        ("@reboot", "only 5-field expressions and @hourly ... @yearly translate"),
        ("0 0 0 * * *", "only 5-field expressions"),
        ("0 25 * * *", 'cron hour "25": out of range 0-23'),
    ],
)
def test_what_has_no_equivalent_is_refused_with_the_reason(cron: str, reason: str) -> None:
    with pytest.raises(CronNotTranslatable, match=None) as caught:
        cron_to_oncalendar(cron)
    assert reason in str(caught.value)
