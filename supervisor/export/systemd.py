"""`supervise export systemd`: one systemd unit per service, from a validated `Config`.

A long-running command becomes `NAME.service` running it directly; a Python
target (which needs the supervisor's protocol) becomes `NAME.service` running
`supervise run-service NAME -c CONFIG`. A scheduled command becomes a
`Type=oneshot` `NAME.service` plus `NAME.timer` (`OnCalendar=` from `cron`
where it translates, `OnUnitActiveSec=` from `every`, ...). `sockets` become
`NAME-SOCKET.socket` units, `on_fatal` a `NAME-on-fatal.service` named in
`OnFailure=`, `processes = N` a template `NAME@.service` and a `NAME.target`
wanting its N instances.

What has no systemd equivalent is refused per service with the reason (a cron
expression OnCalendar= cannot express), or noted as a comment in the unit
(sampled `max_memory`, heartbeats).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from supervise.supervisor.config.keys import RestartMode
from supervise.supervisor.config.model import Config, ServiceConfig
from supervise.supervisor.core.restart import ExitStatuses
from supervise.supervisor.core.units import parse_duration_ms
from supervise.supervisor.export.oncalendar import CronNotTranslatable, cron_to_oncalendar

__all__ = ["Export", "NoEquivalent", "export_systemd"]

_RESTART = {
    RestartMode.ALWAYS: "always",
    RestartMode.ON_SUCCESS: "on-success",
    RestartMode.ON_FAILURE: "on-failure",
    RestartMode.ON_ABNORMAL: "on-abnormal",
    RestartMode.ON_ABORT: "on-abort",
    RestartMode.ON_WATCHDOG: "on-watchdog",
    RestartMode.NEVER: "no",
}
_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


class NoEquivalent(ValueError):
    """A service (or one of its keys) systemd cannot express; the message says why."""


@dataclass
class Export:
    """The units written (file name -> text) and the services refused (name -> why)."""

    units: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def export_systemd(config: Config, *, config_path: Path) -> Export:
    """Every service of `config` as systemd units; `config_path` is what `run-service` units name."""
    result = Export()
    for svc in config.services.values():
        try:
            result.units.update(_units(svc, config_path))
        except (CronNotTranslatable, NoEquivalent) as e:
            result.refused[svc.name] = str(e)
    return result


# -- one service ---------------------------------------------------------------


def _units(svc: ServiceConfig, config_path: Path) -> dict[str, str]:
    if svc.sockets and svc.processes > 1:
        raise NoEquivalent(
            "sockets shared by processes > 1: a systemd socket unit activates one service, not a template's instances"
        )
    name = f"{svc.name}@" if svc.processes > 1 else svc.name
    timer = _timer(svc) if svc.schedule is not None and svc.command is not None else None
    units: dict[str, str] = {}
    unit, service, install = _unit_section(svc), _service_section(svc, config_path, oneshot=timer is not None), []
    if timer is not None:
        units[f"{svc.name}.timer"] = _render(
            ("Unit", [f"Description=Schedule of {svc.name} (exported from supervise)"]),
            ("Timer", [*timer, f"Unit={svc.name}.service"]),
            ("Install", ["WantedBy=timers.target"]),
        )
    elif svc.autostart and svc.processes == 1:
        install.append("WantedBy=multi-user.target")
    for sock, address in svc.sockets.items():
        sock_unit = f"{svc.name}-{sock}.socket"
        service.append(f"Sockets={sock_unit}")
        units[sock_unit] = _render(
            ("Unit", [f"Description=Socket {sock} of {svc.name} (exported from supervise)"]),
            ("Socket", [_listen(address), f"FileDescriptorName={sock}", f"Service={name}.service"]),
            ("Install", ["WantedBy=sockets.target"]),
        )
    if svc.on_fatal is not None:
        unit.append(f"OnFailure={svc.name}-on-fatal.service")
        units[f"{svc.name}-on-fatal.service"] = _render(
            ("Unit", [f"Description=on_fatal hook of {svc.name} (exported from supervise)"]),
            (
                "Service",
                [
                    "Type=oneshot",
                    f"Environment=SUPERVISE_SERVICE={svc.name}",
                    _exec("ExecStart", svc.on_fatal, svc),
                ],
            ),
        )
    units[f"{name}.service"] = _render(("Unit", unit), ("Service", service), ("Install", install))
    if svc.processes > 1:
        wants = " ".join(f"{svc.name}@{i}.service" for i in range(svc.processes))
        units[f"{svc.name}.target"] = _render(
            ("Unit", [f"Description={svc.name}: {svc.processes} processes (exported)", f"Wants={wants}"]),
            ("Install", ["WantedBy=multi-user.target"] if svc.autostart else []),
        )
    return units


def _unit_section(svc: ServiceConfig) -> list[str]:
    lines = [f"Description={svc.name} (exported from supervise)"]
    if svc.requires:
        deps = " ".join(f"{dep}.service" for dep in svc.requires)
        lines += [f"Requires={deps}", f"After={deps}"]
    lines += [f"StartLimitIntervalSec={_seconds(svc.restart_window_ms)}", f"StartLimitBurst={svc.max_restarts + 1}"]
    return lines


def _service_section(svc: ServiceConfig, config_path: Path, *, oneshot: bool) -> list[str]:
    lines: list[str] = []
    if oneshot:
        lines.append("Type=oneshot")
        if svc.schedule is not None and svc.schedule.timeout_ms is not None:
            lines.append(f"TimeoutStartSec={_seconds(svc.schedule.timeout_ms)}")
    else:
        lines.append("Type=notify" if svc.sd_notify else "Type=simple")
    if svc.command is not None:
        lines.append(_exec("ExecStart", svc.command, svc))
    else:
        argv = [sys.executable, "-m", "supervise.supervisor", "run-service", svc.name, "-c", str(config_path)]
        lines.append("# a Python target speaks supervise's protocol: it runs under its own supervisor")
        lines.append("ExecStart=" + " ".join(_quote(a) for a in argv))
    if not oneshot:
        lines += [f"Restart={_RESTART[svc.restart]}", f"RestartSec={_seconds(svc.backoff_ms)}"]
        if svc.sd_notify:
            lines.append(f"TimeoutStartSec={_seconds(svc.start_timeout_ms)}")
        if svc.sd_notify and svc.watchdog_timeout_ms is not None:
            lines.append(f"WatchdogSec={_seconds(svc.watchdog_timeout_ms)}")
    lines += [f"KillSignal={signal.Signals(svc.stop_signal).name}", f"TimeoutStopSec={_seconds(svc.stop_timeout_ms)}"]
    for key, statuses in (
        ("SuccessExitStatus", svc.success_exit_codes),
        ("RestartPreventExitStatus", svc.restart_prevent_exit_codes),
        ("RestartForceExitStatus", svc.restart_force_exit_codes),
    ):
        if statuses.codes or statuses.signals:
            lines.append(f"{key}={_statuses(statuses)}")
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in svc.env.items()]
    lines.append(f"WorkingDirectory={_quote(str(svc.cwd))}")
    lines += _identity(svc) + _limits(svc) + _hooks(svc)
    if svc.max_memory_bytes is not None:
        lines.append(f"# max_memory ({svc.max_memory_bytes} bytes of sampled RSS) has no equivalent; see MemoryMax=")
    return lines


def _identity(svc: ServiceConfig) -> list[str]:
    lines = [f"User={svc.user}"] if svc.user else []
    lines += [f"Group={svc.group}"] if svc.group else []
    if svc.supplementary_groups:
        lines.append("SupplementaryGroups=" + " ".join(svc.supplementary_groups))
    lines += [f"UMask={svc.umask:04o}"] if svc.umask is not None else []
    return lines


def _limits(svc: ServiceConfig) -> list[str]:
    lines = [f"Limit{name.upper()}={'infinity' if v < 0 else v}" for name, v in svc.rlimits.items()]
    lines += [f"Nice={svc.nice}"] if svc.nice is not None else []
    lines += [f"OOMScoreAdjust={svc.oom_score_adjust}"] if svc.oom_score_adjust is not None else []
    lines += [f"CPUQuota={svc.cpu_quota_percent}%"] if svc.cpu_quota_percent is not None else []
    lines += [f"MemoryMax={svc.memory_max_bytes}"] if svc.memory_max_bytes is not None else []
    return lines


def _hooks(svc: ServiceConfig) -> list[str]:
    pairs = (
        ("ExecStartPre", svc.before_start),
        ("ExecStartPost", svc.after_start),
        ("ExecStop", svc.before_stop),  # then KillSignal to what is left, as supervise's stop signal after the hook
        ("ExecStopPost", svc.after_stop),
    )
    return [_exec(key, argv, svc) for key, argv in pairs if argv is not None]


def _timer(svc: ServiceConfig) -> list[str]:
    assert svc.schedule is not None
    spec = svc.schedule.spec
    zone = spec.get("timezone")
    timezone = str(zone) if zone else None
    if "cron" in spec:
        return [f"OnCalendar={cron_to_oncalendar(str(spec['cron']), timezone)}"]
    if "every" in spec:
        every = _seconds(parse_duration_ms(spec["every"]))
        after = "OnUnitInactiveSec" if spec.get("after_finish") else "OnUnitActiveSec"
        return [f"OnActiveSec={every}", f"{after}={every}", "AccuracySec=1s"]
    if "at" in spec:
        values = spec["at"] if isinstance(spec["at"], list) else [spec["at"]]
        return [f"OnCalendar={_calendar_time(v, timezone)}" for v in values]
    raise NoEquivalent(
        "on_start and manual schedules have no timer: run it with 'systemctl start', or keep it in supervise"
    )


def _calendar_time(value: object, timezone: str | None) -> str:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f" {timezone}" if timezone else "")


# -- unit syntax ------------------------------------------------------------------


def _render(*sections: tuple[str, Iterable[str]]) -> str:
    parts = ["# Generated by 'supervise export systemd'. Edit the supervise config and export again.\n"]
    for title, lines in sections:
        body = list(lines)
        if body:
            parts.append(f"[{title}]\n" + "".join(f"{line}\n" for line in body))
    return "\n".join(parts)


def _exec(key: str, argv: Iterable[str], svc: ServiceConfig) -> str:
    args = list(argv)
    args[0] = _absolute(args[0], svc)
    return f"{key}=" + " ".join(_quote(a) for a in args)


def _absolute(program: str, svc: ServiceConfig) -> str:
    """systemd wants an absolute path: look the program up as the worker's exec would."""
    if "/" in program:
        return os.path.normpath(svc.cwd / program)
    found = shutil.which(program, path=svc.env.get("PATH", os.environ.get("PATH", os.defpath)))
    return found or program


def _quote(arg: str) -> str:
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _listen(address: str) -> str:
    if address.startswith("unix:"):
        return f"ListenStream={address.removeprefix('unix:')}"
    return f"ListenStream={address.removeprefix('tcp://')}"


def _seconds(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _statuses(statuses: ExitStatuses) -> str:
    names = [signal.Signals(s).name for s in sorted(statuses.signals)]
    return " ".join([*(str(c) for c in sorted(statuses.codes)), *names])
