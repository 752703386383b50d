"""`python -m bench.dashboard` still runs: a few services, one load, every figure printed (none judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_dashboard_bench_prints_weight_and_first_paint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.dashboard", "--services", "5", "--loads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    assert "page weight:" in done.stdout and "KiB in" in done.stdout
    assert "first contentful paint: median" in done.stdout
    assert "overview with 5 services on screen: median" in done.stdout
