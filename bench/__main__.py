"""`python -m bench [--quick] [--only SYSTEM ...] [--n N] [--json FILE]`: run the benchmark, print the table."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from importlib.metadata import version

from bench import api, latency, lifecycle, overhead, procs, scale, supervise_only, throughput, venv
from bench.plan import Plan
from bench.session import REPO, System
from bench.table import Row, render

SYSTEMS = ("supervise", "circus", "supervisord")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a reduced set, in under 2 minutes")
    ap.add_argument(
        "--only",
        action="append",
        choices=SYSTEMS,
        help="run only this system (repeatable)",
    )
    ap.add_argument("--n", type=int, help="every scenario at N services (default: 1/50/200, 200)")
    ap.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=(
            "run only this scenario (repeatable): cold start, restart, idle, crash storm, hang, schedule, url calls,"
            " http api, scale"
        ),
    )
    ap.add_argument("--json", metavar="FILE", help="also write the rows, with every sample, as JSON")
    ap.add_argument(
        "--scale",
        action="store_true",
        help="also the scale curve: supervise alone at N = 200, 1 000 and 2 000 (cold start, status, idle, RSS)",
    )
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run supervise from another source tree as the system `before` (DIR holds "
        "supervise/{protocol,supervisor,workers}; see bench/README.md), for a before/after in one run",
    )
    args = ap.parse_args(argv)

    plan = Plan.quick() if args.quick else Plan()
    if args.n:
        plan = plan.sized(args.n)
    names = [s for s in SYSTEMS if not args.only or s in args.only]
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    versions = {"supervise": version("supervise")}
    systems = [System("supervise", sys.executable, str(REPO))] if "supervise" in names else []
    base = os.path.abspath(args.baseline) if args.baseline else ""
    if args.baseline and systems:
        systems.append(
            System(
                "before",
                sys.executable,
                os.pathsep.join([base, str(REPO)]),
                driver="supervise",
                env={"PYTHONPATH": base},
            )
        )
        versions["before"] = base
    if any(n != "supervise" for n in names):
        peer_versions = venv.ensure(log)
        versions |= {
            "circus": peer_versions["circus"],
            "supervisord": peer_versions["supervisor"],
        }
        systems += [System(n, str(venv.python()), str(venv.pythonpath())) for n in names if n != "supervise"]

    # As pip does at install: without it (PYTHONDONTWRITEBYTECODE=1, or a read-only tree) every
    # daemon, worker and CLI start compiles each supervise module again (cold start of 50:
    # +89 ms and +2.3 MB RSS on 2026-11-29; bench/README.md).
    trees = [str(REPO / d) for d in ("protocol", "supervisor", "workers")] + ([base] if args.baseline else [])
    subprocess.run([sys.executable, "-m", "compileall", "-q", *trees], check=True, stdout=subprocess.DEVNULL)
    tag = uuid.uuid4().hex[:12]
    rows: list[Row] = []
    scenarios = [
        ("cold start", lambda: lifecycle.run(systems, plan, tag, log)),
        ("restart", lambda: latency.run(systems, plan, tag, log)),
        ("idle", lambda: overhead.idle(systems, plan, tag, log, "sleep")),
        *([("idle", lambda: overhead.idle(systems, plan, tag, log, "python"))] if plan.idle_python else []),
        ("crash storm", lambda: overhead.storm(systems, plan, tag, log)),
        *(
            [
                (
                    "hang (supervise only)",
                    lambda: supervise_only.hang(systems[0], plan, tag, log),
                ),
                (
                    "schedule (supervise only)",
                    lambda: supervise_only.lateness(systems[0], plan, tag, log),
                ),
                (
                    "url calls (supervise only)",
                    lambda: throughput.run(plan, tag, log),
                ),
                (
                    "http api (supervise only)",
                    lambda: api.run(plan, tag, log),
                ),
            ]
            if systems[0].name == "supervise"
            else []
        ),
    ]
    if args.scale:
        scenarios.append(("scale", lambda: scale.run(systems, plan, tag, log)))
    if args.scenario:
        scenarios = [(name, f) for name, f in scenarios if any(name.startswith(x) for x in args.scenario)]
    failures = 0
    try:
        for name, scenario in scenarios:
            try:
                rows += scenario()
            except Exception as e:  # noqa: BLE001 - one broken scenario must not cost the others' numbers
                failures += 1
                log(f"{name}: FAILED: {e}")
                row = Row(name, "FAILED (see stderr)", "s")
                row.notes = {s.name: "failed" for s in systems}
                rows.append(row)
    finally:
        left = procs.kill_tagged(tag)
        if left:
            log(f"killed {len(left)} leftover process(es): {left}")
        log(f"no process of this run left: {not procs.tagged(tag)}")

    header = (
        f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        + " · ".join(f"{k} {v}" for k, v in versions.items())
        + f" · {'quick' if args.quick else 'full'}{' partial' if args.scenario else ''} run,"
        + f" {time.monotonic() - started:.0f} s"
    )
    print(header)
    print(render(rows, [s.name for s in systems]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "header": header,
                    "versions": versions,
                    "rows": [
                        {
                            "scenario": r.scenario,
                            "label": r.label,
                            "unit": r.unit,
                            "stat": r.stat,
                            "samples": r.samples,
                            "notes": r.notes,
                            "values": {s.name: r.value(s.name) for s in systems},
                        }
                        for r in rows
                    ],
                },
                f,
                indent=1,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
