"""supervise: native TOML config, `python -m supervise.supervisor start`, our `Client`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.workload import SUPERVISE_TARGET, Workload

NAME = "supervise"


def _start_timeout() -> str:
    """ "0s" (RUNNING at spawn, like supervisord startsecs=0) if the validator takes it, else "1ms"."""
    try:
        from supervise.supervisor.config.loader import parse_config

        parse_config(
            {"services": {"x": {"command": ["true"], "start_timeout": "0s"}}},
            base_dir=Path("/tmp"),
        )
        return "0s"
    except Exception:  # noqa: BLE001 - any refusal: fall back
        return "1ms"


def write_config(
    workdir: Path,
    wl: Workload,
    *,
    heartbeat_interval: str = "1s",
    heartbeat_timeout: str = "5s",
) -> Path:
    lines = ["[supervisor]", 'state_dir = "state"', ""]
    if wl.kind == "python":
        (workdir / "benchworker.py").write_text(SUPERVISE_TARGET)
    start_timeout = _start_timeout()
    for name in wl.names:
        lines.append(f"[services.{name}]")
        if wl.kind == "python":
            lines.append('target = "benchworker:loop"')
            lines.append(f'heartbeat_interval = "{heartbeat_interval}"')
            lines.append(f'heartbeat_timeout = "{heartbeat_timeout}"')
            lines.append('stop_timeout = "2s"')
            lines.append(
                'start_timeout = "300s"'
            )  # 200 runtimes importing at once on 2 cores: give them time to say hello
        else:
            lines.append(f"command = {json.dumps(wl.argv(workdir))}")
            lines.append(f'start_timeout = "{start_timeout}"')
        lines += ['restart = "always"', 'backoff = "0s"', "max_restarts = 1000000", ""]
    path = workdir / "supervise.toml"
    path.write_text("\n".join(lines))
    return path


def daemon_argv(workdir: Path, python: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "supervise.supervisor",
        "start",
        str(workdir / "supervise.toml"),
    ]


def cli_argv(workdir: Path, python: str, *, before: bool = False) -> list[str]:
    """The `supervise` command; for `before` (another source tree, whose entry point may differ),
    what its console script did: import `cli.main` and call `main()`."""
    command = (
        [sys.executable, "-c", "import sys; from supervise.supervisor.cli.main import main; sys.exit(main())"]
        if before
        else [str(Path(sys.executable).with_name("supervise"))]
    )
    return [*command, "status", "-c", str(workdir / "supervise.toml")]


def endpoint(workdir: Path) -> str:
    return f"ipc://{workdir}/state/control.sock"


class Api:
    """Runs in the agent: our blocking `Client`."""

    RUNNING = ("RUNNING",)

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        from supervise.protocol import Client

        self.client = Client(endpoint, timeout_s=timeout_s)

    def status_all(self) -> object:
        return self.client.call("status")

    def states(self) -> dict[str, tuple[bool, int | None]]:
        """name -> (reported running, pid)."""
        return {s["name"]: (s["state"] in self.RUNNING, s["pid"]) for s in self.client.call("status")["services"]}

    def pid(self, name: str) -> int | None:
        (s,) = self.client.call("status", name=name)["services"]
        return s["pid"] if s["state"] in self.RUNNING else None

    def state(self, name: str) -> str:
        (s,) = self.client.call("status", name=name)["services"]
        return s["state"]

    def stop_all(self) -> None:
        self.client.call("stop", all=True)
