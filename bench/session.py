"""A running system: its daemon and its agent, started and always torn down together."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import procs
from bench.workload import Workload

REPO = Path(__file__).resolve().parent.parent


class AgentError(RuntimeError):
    pass


class System:
    """One system under test: its driver module and the interpreter that runs it."""

    def __init__(
        self,
        name: str,
        python: str,
        pythonpath: str = str(REPO),
        *,
        driver: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.python = python
        # where `import bench` works for the agent; for the peers it must not be the repo
        # root, whose supervisor/ folder would shadow supervisord's `supervisor` package
        self.pythonpath = pythonpath
        self.driver_name = driver or name  # "before" is supervise's driver on another source tree
        self.driver: ModuleType = importlib.import_module(f"bench.sys_{self.driver_name}")
        self.env = env or {}  # more environment for the daemon and the CLI (before: its PYTHONPATH)


class Session:
    """`with Session(system, workload, tag) as s:` starts the daemon (t0 recorded) and the agent.

    On exit: SIGTERM to the daemon (a graceful stop of all), then SIGKILL to anything
    still carrying the run's tag, then the temp dir goes. `leftovers` lists what had to be killed.
    """

    def __init__(
        self,
        system: System,
        wl: Workload,
        tag: str,
        *,
        agent_timeout_s: float = 10.0,
        **config: Any,
    ) -> None:
        self.system, self.wl, self.tag = system, wl, tag
        # short path: ipc:// socket paths must stay under 107 bytes
        self.workdir = Path(tempfile.mkdtemp(prefix=f"b{system.name[:2]}", dir="/tmp"))
        system.driver.write_config(self.workdir, wl, **config)
        self.env = {**os.environ, procs.TAG_VAR: tag, "PYTHONUNBUFFERED": "1"}
        self.env.pop("PYTHONPATH", None)
        self.env.update(system.env)
        self.agent_env = {**self.env, "PYTHONPATH": system.pythonpath}
        self.agent_timeout_s = agent_timeout_s
        self.daemon: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.t0 = 0.0
        self.leftovers: list[int] = []

    def __enter__(self) -> Session:  # noqa: PYI034
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        d = self.system.driver
        log = open(self.workdir / "daemon.out", "wb")  # noqa: SIM115 - closed once Popen has it
        self.t0 = time.monotonic()
        self.daemon = subprocess.Popen(
            d.daemon_argv(self.workdir, self.system.python),
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.agent = subprocess.Popen(
            [
                self.system.python,
                "-m",
                "bench.agent",
                self.system.driver_name,
                d.endpoint(self.workdir),
                str(self.agent_timeout_s),
            ],
            cwd=self.workdir,
            env=self.agent_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def call(self, op: str, **args: Any) -> Any:
        assert self.agent is not None and self.agent.stdin and self.agent.stdout
        self.agent.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.agent.stdin.flush()
        line = self.agent.stdout.readline()
        if not line:
            raise AgentError(f"{self.system.name} agent died (daemon log: {self.tail()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AgentError(f"{self.system.name} {op}: {reply['error']}")
        return reply["result"]

    def wait_ready(self, timeout: float = 120.0) -> dict:
        return self.call(
            "wait_ready",
            daemon=self.pid,
            n=self.wl.n,
            timeout=timeout,
            comm=self.wl.worker_comm,
        )

    def cli(self) -> float:
        """One run of the system's `status` command line, end to end, in seconds."""
        d = self.system.driver
        argv = (
            d.cli_argv(self.workdir, self.system.python, before=True)
            if self.system.name == "before"
            else d.cli_argv(self.workdir, self.system.python)
        )
        t0 = time.perf_counter()
        done = subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if self.wl.names[0].encode() not in done.stdout:  # supervisorctl exits 3 when some are not running
            raise AgentError(f"{argv[0]} status printed no services: {done.stdout[-300:]!r} {done.stderr[-300:]!r}")
        return elapsed

    def tail(self, n: int = 600) -> str:
        try:
            return (self.workdir / "daemon.out").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop-all through the client (supervisord alone would otherwise stop ~2 workers per
        second of its poll loop on SIGTERM), SIGTERM the daemon, then SIGKILL what is left."""
        if self.agent is not None:
            if self.daemon is not None and self.daemon.poll() is None:
                try:
                    self.call("stop_all", pids=[], timeout=10)
                except Exception:  # noqa: BLE001, S110 - best effort; SIGTERM and SIGKILL follow
                    pass
            try:
                self.agent.stdin.write(json.dumps({"op": "quit"}) + "\n")  # type: ignore[union-attr]
                self.agent.stdin.close()  # type: ignore[union-attr]
                self.agent.wait(timeout=5)
            except Exception:  # noqa: BLE001
                self.agent.kill()
                self.agent.wait()
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait()
        self.leftovers = procs.kill_tagged(self.tag)
        if self.leftovers:
            print(
                f"  ! {self.system.name}: killed {len(self.leftovers)} leftover process(es)",
                file=sys.stderr,
            )
        shutil.rmtree(self.workdir, ignore_errors=True)
