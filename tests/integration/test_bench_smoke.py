"""The benchmark harness still runs: supervise alone, at N=5, in --quick mode.

No timing is asserted (the machine is shared and noisy): only that every scenario
produced numbers and that no process of the run was left behind. The peers (Circus,
supervisord) are left out, so this needs neither their venv nor the network.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "cold start",
    "stop-all",
    "restart",
    "control",
    "idle",
    "crash storm",
    "hang (supervise only)",
    "http api (supervise only)",
}


@pytest.mark.timeout(180)
def test_bench_quick_supervise_only_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "supervise",
            "--n",
            "5",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no process of this run left: True" in done.stderr
    assert "| supervise" in done.stdout  # the table was printed

    rows = json.loads(out.read_text())["rows"]
    assert SCENARIOS <= {r["scenario"] for r in rows}
    for row in rows:
        if row["notes"].get("supervise"):  # e.g. scheduling, not built yet
            continue
        value = row["values"]["supervise"]
        assert isinstance(value, (int, float)) and value >= 0, row
        assert row["samples"]["supervise"], row
