"""`supervise export systemd`: units from a real config, verified by systemd-analyze where installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[supervisor]
state_dir = "state"

[services.web]
command = ["sleep", "1000"]
env = { PORT = "8080", GREETING = "hello world 100%" }
restart = "always"
max_restarts = 3
restart_window = "2m"
backoff = "500ms"
stop_signal = "INT"
stop_timeout = "20s"
rlimits = { nofile = 4096, core = 0 }
nice = 5
oom_score_adjust = 200
umask = "027"
sockets = { http = "tcp://127.0.0.1:18080" }
before_start = ["true"]
after_stop = ["sh", "-c", "echo stopped"]
on_fatal = ["sh", "-c", "echo $SUPERVISE_SERVICE down"]
success_exit_codes = [3, "TERM"]

[services.api]
command = ["sleep", "1000"]
type = "notify"
watchdog = "10s"
processes = 2
requires = ["web"]

[services.report]
command = ["sh", "-c", "echo report"]
cron = "30 2 * * 1-5"
timezone = "Europe/Paris"
timeout = "5m"

[services.tick]
command = ["true"]
every = "10m"

[services.monthly]
command = ["true"]
cron = "0 0 L * *"
"""


def export(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "supervise.toml"
    config.write_text(CONFIG)
    argv = [sys.executable, "-m", "supervise.supervisor", "export", "systemd", "-c", str(config), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_one_unit_per_service_with_timers_sockets_and_a_clear_refusal(tmp_path: Path) -> None:
    out = tmp_path / "units"
    result = export(tmp_path, "--dir", str(out))
    assert result.returncode == 1  # one service could not be exported ...
    assert result.stderr == (
        'supervise export: services.monthly not exported: cron day of month "L": "L" has no OnCalendar= equivalent\n'
    )
    assert sorted(p.name for p in out.iterdir()) == [  # ... the others were
        "api.target", "api@.service", "report.service", "report.timer", "tick.service", "tick.timer",
        "web-http.socket", "web-on-fatal.service", "web.service",
    ]  # fmt: skip
    web = (out / "web.service").read_text()
    for line in [
        "StartLimitIntervalSec=120s",
        "StartLimitBurst=4",  # the first start and max_restarts = 3 restarts
        "OnFailure=web-on-fatal.service",
        f"ExecStart={shutil.which('sleep')} 1000",
        "Restart=always",
        "RestartSec=500ms",
        "KillSignal=SIGINT",
        "TimeoutStopSec=20s",
        "SuccessExitStatus=3 SIGTERM",
        "Environment=PORT=8080",
        'Environment="GREETING=hello world 100%%"',
        f"WorkingDirectory={tmp_path}",
        "UMask=0027",
        "LimitNOFILE=4096",
        "LimitCORE=0",
        "Nice=5",
        "OOMScoreAdjust=200",
        f"ExecStartPre={shutil.which('true')}",
        f'ExecStopPost={shutil.which("sh")} -c "echo stopped"',
        "Sockets=web-http.socket",
        "WantedBy=multi-user.target",
    ]:
        assert line + "\n" in web, line
    assert (
        "ListenStream=127.0.0.1:18080\nFileDescriptorName=http\nService=web.service\n"
        in (out / "web-http.socket").read_text()
    )
    api = (out / "api@.service").read_text()
    assert "Type=notify\n" in api and "WatchdogSec=10s\n" in api and "Requires=web.service\nAfter=web.service\n" in api
    assert "Wants=api@0.service api@1.service\n" in (out / "api.target").read_text()
    report = (out / "report.service").read_text()
    assert "Type=oneshot\n" in report and "TimeoutStartSec=5m\n" not in report and "TimeoutStartSec=300s\n" in report
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00 Europe/Paris\n" in (out / "report.timer").read_text()
    assert "OnUnitActiveSec=600s\n" in (out / "tick.timer").read_text()


def test_without_dir_the_units_are_printed_and_json_lists_them(tmp_path: Path) -> None:
    printed = export(tmp_path)
    assert "# web.service\n" in printed.stdout and "[Service]\n" in printed.stdout
    as_json = json.loads(export(tmp_path, "--json").stdout)
    assert as_json["refused"] == {"monthly": 'cron day of month "L": "L" has no OnCalendar= equivalent'}
    assert "report.timer" in as_json["units"] and as_json["dir"] is None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    out = tmp_path / "units"
    export(tmp_path, "--dir", str(out))
    units = sorted(str(p) for p in out.iterdir())
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
