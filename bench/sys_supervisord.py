"""supervisord: native INI config, `supervisord -n`, XML-RPC over its unix socket (peers' venv)."""

from __future__ import annotations

import shlex
from pathlib import Path

from bench.workload import Workload

NAME = "supervisord"


def write_config(workdir: Path, wl: Workload, **_: object) -> Path:
    (workdir / "logs").mkdir(exist_ok=True)
    lines = [
        "[unix_http_server]",
        f"file = {workdir}/sd.sock",
        "",
        "[supervisord]",
        "nodaemon = true",
        f"logfile = {workdir}/supervisord.log",
        f"pidfile = {workdir}/supervisord.pid",
        f"childlogdir = {workdir}/logs",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl = {endpoint(workdir)}",
        "",
    ]
    command = shlex.join(wl.argv(workdir))
    for name in wl.names:
        lines += [
            f"[program:{name}]",
            f"command = {command}",
            "startsecs = 0",  # RUNNING at spawn: no start window, so no give-up after startretries
            "autorestart = true",
            "redirect_stderr = true",
            "",
        ]
    path = workdir / "supervisord.conf"
    path.write_text("\n".join(lines))
    return path


def daemon_argv(workdir: Path, python: str) -> list[str]:
    return [
        str(Path(python).with_name("supervisord")),
        "-n",
        "-c",
        str(workdir / "supervisord.conf"),
    ]


def cli_argv(workdir: Path, python: str) -> list[str]:
    return [
        str(Path(python).with_name("supervisorctl")),
        "-c",
        str(workdir / "supervisord.conf"),
        "status",
    ]


def endpoint(workdir: Path) -> str:
    return f"unix://{workdir}/sd.sock"


class Api:
    """Runs in the agent, under the peers' venv: supervisor's own XML-RPC transport."""

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        import socket
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        socket.setdefaulttimeout(timeout_s)  # the transport opens plain sockets; bound each call
        self.transport = SupervisorTransport(None, None, serverurl=endpoint)
        self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self.transport).supervisor

    @property
    def rpc(self):
        return _Resetting(self._rpc, self.transport)

    def status_all(self) -> object:
        return self.rpc.getAllProcessInfo()

    def states(self) -> dict[str, tuple[bool, int | None]]:
        return {p["name"]: (p["statename"] == "RUNNING", p["pid"] or None) for p in self.rpc.getAllProcessInfo()}

    def pid(self, name: str) -> int | None:
        info = self.rpc.getProcessInfo(name)
        return info["pid"] if info["statename"] == "RUNNING" and info["pid"] else None

    def state(self, name: str) -> str:
        return self.rpc.getProcessInfo(name)["statename"]

    def stop_all(self) -> None:
        self.rpc.stopAllProcesses(True)


class _Resetting:
    """Closes the transport's kept-alive connection after a failed call (else it is stuck
    in http.client's CannotSendRequest after, say, a refused connect at daemon start)."""

    def __init__(self, proxy: object, transport: object) -> None:
        self.proxy, self.transport = proxy, transport

    def __getattr__(self, method: str) -> object:
        def call(*args: object) -> object:
            try:
                return getattr(self.proxy, method)(*args)
            except Exception:
                self.transport.close()  # type: ignore[attr-defined]
                raise

        return call
