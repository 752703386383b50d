"""`python -m bench.routed_store [--runs N] [--rounds R]`: what the store per tenant costs the history writer.

N one-shot runs written as the scheduler writes them, through the history writer
(`QueuedStore`): inserted pending, then due, starting, running and succeeded, with
the scheduler's reads between (`pending_runs`, `get_run`, `count_runs`). Three stores,
alternated R times: SQLite alone (`plain`), the routed store over it with no tenant
(`routed`: the daemon's store when no tenant has a service), and the routed store
with the service owned by a tenant (`tenant`: its own file). Prints the median CPU
time of this process (the writer thread included) and the wall time of each.
CPU time is what to compare on a shared machine: wall time follows the load.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from supervise.supervisor.core.runs import RunOrigin, RunState, new_run, transition
from supervise.supervisor.store.base import Store
from supervise.supervisor.store.queued import QueuedStore
from supervise.supervisor.store.routed import RoutedStore
from supervise.supervisor.store.sqlite import SqliteStore
from supervise.supervisor.store.tenants import SqliteTenants

KINDS = ("plain", "routed", "tenant")


def _store(kind: str, folder: Path) -> Store:
    main = SqliteStore(folder / "history.db")
    if kind == "plain":
        return main.open()
    owners = {"svc": "acme"} if kind == "tenant" else {}
    return RoutedStore(main, SqliteTenants(folder / "tenants"), owners).open()


def measure(kind: str, runs: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to write `runs` runs' lives through the history writer."""
    folder = Path(tempfile.mkdtemp(prefix="sv-bench-routed-", dir="/tmp"))
    queued = QueuedStore(_store(kind, folder), shared=False)
    try:
        t0 = datetime.now(UTC)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        made = [
            new_run(
                "svc", at=t0, nominal_time=t0 + timedelta(seconds=i), origin=RunOrigin.ONESHOT, state=RunState.PENDING
            )
            for i in range(runs)
        ]
        for run in made:
            queued.insert_run(run)
        for i, run in enumerate(made):
            run = transition(run, RunState.DUE, at=t0)
            queued.update_run(run)
            run = transition(run, RunState.STARTING, at=t0)
            queued.update_run(run)
            run = transition(run, RunState.RUNNING, at=t0, pid=1)
            queued.update_run(run)
            queued.update_run(transition(run, RunState.SUCCEEDED, at=t0, exit_code=0))
            if i % 500 == 0:
                queued.pending_runs(None, 500)
                queued.get_run(run.run_id)
                queued.count_runs("svc", {RunState.PENDING})
        if not queued.wait_written(300):
            raise RuntimeError("the history writer did not finish within 300 s")
        return time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        queued.close()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routed_store", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000, help="runs written in each measure (default 10 000)")
    ap.add_argument("--rounds", type=int, default=5, help="times each store is measured, alternated (default 5)")
    args = ap.parse_args(argv)
    found: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            found[kind].append(measure(kind, args.runs))
    for kind, figures in found.items():
        cpu = [c for c, _ in figures]
        wall = [w for _, w in figures]
        print(
            f"{kind:<7} {args.runs} runs: CPU median {statistics.median(cpu):.3f} s"
            f" ({', '.join(f'{c:.3f}' for c in cpu)}), wall median {statistics.median(wall):.3f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
