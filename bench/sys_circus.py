"""Circus: native INI config, `circusd`, `circus.client.CircusClient` (run from the peers' venv)."""

from __future__ import annotations

import shlex
from pathlib import Path

from bench.workload import Workload

NAME = "circus"


def write_config(workdir: Path, wl: Workload, **_: object) -> Path:
    argv = wl.argv(workdir)
    lines = [
        "[circus]",
        f"endpoint = {endpoint(workdir)}",
        f"pubsub_endpoint = ipc://{workdir}/circus-pub.sock",
        "statsd = False",
        "",
    ]
    for name in wl.names:
        lines += [
            f"[watcher:{name}]",
            f"cmd = {shlex.quote(argv[0])}",
            f"args = {shlex.join(argv[1:])}",
            "numprocesses = 1",
            "warmup_delay = 0",  # the default; spelled out: start the next watcher at once
            "respawn = True",
            "max_retry = -1",  # never give up on a watcher
            "copy_env = True",  # PATH and BENCH_TAG reach the workers
            "",
        ]
    path = workdir / "circus.ini"
    path.write_text("\n".join(lines))
    return path


def daemon_argv(workdir: Path, python: str) -> list[str]:
    return [str(Path(python).with_name("circusd")), str(workdir / "circus.ini")]


def cli_argv(workdir: Path, python: str) -> list[str]:
    return [
        str(Path(python).with_name("circusctl")),
        "--endpoint",
        endpoint(workdir),
        "status",
    ]


def endpoint(workdir: Path) -> str:
    return f"ipc://{workdir}/circus-ctl.sock"


class Api:
    """Runs in the agent, under the peers' venv: Circus's own client library."""

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        from circus.client import CircusClient

        self.client = CircusClient(endpoint=endpoint, timeout=timeout_s)

    def _call(self, command: str, **props: object) -> dict:
        reply = self.client.call({"command": command, "properties": props})
        if reply.get("status") != "ok":
            raise RuntimeError(f"circus {command}: {reply}")
        return reply

    def status_all(self) -> object:
        return self._call("status")

    def states(self) -> dict[str, tuple[bool, int | None]]:
        """Circus's `status` has no pids: ask `list` for each active watcher's pid."""
        statuses = self._call("status")["statuses"]
        return {name: (st == "active", self.pid(name) if st == "active" else None) for name, st in statuses.items()}

    def pid(self, name: str) -> int | None:
        pids = self._call("list", name=name)["pids"]
        return pids[0] if pids else None

    def state(self, name: str) -> str:
        return self._call("status", name=name)["status"]

    def stop_all(self) -> None:
        self._call("stop", waiting=True)
