"""The agent: drives one system through its own client library, timing calls where they happen.

Run by the harness as `PYTHON -m bench.agent SYSTEM ENDPOINT` under that system's
interpreter (the peers' venv for Circus and supervisord, the current one for
supervise); JSON lines in on stdin, JSON lines out. Only the standard library and
the system's own client are imported. Times are `time.monotonic()` (CLOCK_MONOTONIC,
shared with the harness) or durations in seconds.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from typing import Any

from bench import procs

POLL_S = 0.001  # pause between two polls of the supervisor


class Agent:
    def __init__(self, api: Any) -> None:
        self.api = api

    def op_ping(self) -> str:
        self.api.status_all()
        return "ok"

    def op_states(self) -> dict:
        return self.api.states()

    def _worker_up(self, pid: int | None, comm: str | None) -> bool:
        """Alive, not a zombie, and (when `comm` is given) exec'd into the worker program."""
        return procs.alive(pid) and (comm is None or procs.comm(pid) == comm)

    def _new_workers(self, daemon: int, known: set[int], comm: str | None) -> list[int]:
        return [p for p in procs.children(daemon) - known if self._worker_up(p, comm)]

    def op_wait_ready(
        self,
        daemon: int,
        n: int,
        timeout: float,
        comm: str | None,
        reported: bool = True,
    ) -> dict:
        """When `n` live workers run and the supervisor reports all `n` services running with them.

        First /proc only (the daemon's children), so that polling does not wake the
        daemon's loop; then the client, every 10 ms, until it reports them running.
        """
        deadline = time.monotonic() + timeout
        while len(self._new_workers(daemon, set(), comm)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._new_workers(daemon, set(), comm))}/{n} workers alive after {timeout} s")
            time.sleep(POLL_S)
        alive_at = time.monotonic()
        if not reported:  # /proc only (a crash storm may keep the daemon from answering)
            return {"at": alive_at, "alive_at": alive_at, "polls": 0, "pids": []}
        polls = 0
        while True:
            polls += 1
            try:
                states = self.api.states()
            except Exception:  # noqa: BLE001 - not listening yet
                states = {}
            up = [pid for running, pid in states.values() if running and self._worker_up(pid, comm)]
            if len(up) >= n:
                return {
                    "at": time.monotonic(),
                    "alive_at": alive_at,
                    "polls": polls,
                    "pids": up,
                }
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(up)}/{n} services reported running after {timeout} s")
            time.sleep(0.01)

    def op_status_calls(self, count: int, max_s: float) -> list[float]:
        """Round trips of the "status of everything" call: `count` of them, or as many as fit in `max_s`."""
        out: list[float] = []
        stop_at = time.monotonic() + max_s
        while len(out) < count and (len(out) < 3 or time.monotonic() < stop_at):
            t0 = time.perf_counter()
            self.api.status_all()
            out.append(time.perf_counter() - t0)
        return out

    def op_restart_sample(self, daemon: int, name: str, timeout: float, comm: str | None) -> float:
        """SIGKILL the worker of `name`; seconds until a new live worker runs.

        The new worker is watched for in /proc (the daemon's children), not by polling
        the supervisor, which would wake a polling daemon early; afterwards the client
        must report that very pid for `name`, or the sample fails.
        """
        old = self.api.pid(name)
        if not old:
            raise RuntimeError(f"{name} has no running worker")
        known = procs.children(daemon)
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        while not (new := self._new_workers(daemon, known, comm)):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{name}: no new worker within {timeout} s")
            time.sleep(POLL_S)
        latency = time.monotonic() - t0
        while self.api.pid(name) != new[0]:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{name}: new worker {new[0]} is not the one reported")
            time.sleep(0.01)
        return latency

    def op_stop_all(self, pids: list[int], timeout: float) -> dict:
        """Stop every service; seconds until the call returned and every pid in `pids` was gone."""
        t0 = time.monotonic()
        self.api.stop_all()
        returned = time.monotonic() - t0
        while any(procs.alive(p) for p in pids) and time.monotonic() - t0 < timeout:
            time.sleep(POLL_S)
        return {
            "seconds": time.monotonic() - t0,
            "call": returned,
            "left": [p for p in pids if procs.alive(p)],
        }

    def op_storm_status(self, duration: float, pause: float) -> list[float | None]:
        """Status calls for `duration` seconds, `pause` apart: round trips, None for a failed one."""
        out: list[float | None] = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                self.api.status_all()
                out.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - a failed call is a data point
                out.append(None)
            time.sleep(pause)
        return out

    def op_hang_sample(self, name: str, timeout: float) -> dict:
        """SIGSTOP the worker (a hang: no heartbeats); when its state left RUNNING, and a new pid ran."""
        old = self.api.pid(name)
        if not old:
            raise RuntimeError(f"{name} has no running worker")
        t0 = time.monotonic()
        os.kill(old, signal.SIGSTOP)
        detected = None
        while time.monotonic() - t0 < timeout:
            if detected is None and self.api.state(name) != "RUNNING":
                detected = time.monotonic() - t0
            pid = self.api.pid(name)
            if pid and pid != old:
                return {
                    "detected": detected or time.monotonic() - t0,
                    "restarted": time.monotonic() - t0,
                }
            time.sleep(0.005)
        raise TimeoutError(f"{name}: hang not handled within {timeout} s")


def main() -> None:
    system, endpoint = sys.argv[1], sys.argv[2]
    timeout_s = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    api = importlib.import_module(f"bench.sys_{system}").Api(endpoint, timeout_s)
    agent = Agent(api)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            reply = {"ok": True, "result": getattr(agent, f"op_{op}")(**request)}
        except Exception as e:  # noqa: BLE001 - reported to the harness, which decides
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
