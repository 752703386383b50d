"""`python -m bench.dashboard [--services 200] [--loads 7]`: the web dashboard's weight and first paint.

supervise alone, from the repository root, with the distribution's Chromium at
/usr/bin/chromium (or $SUPERVISE_CHROMIUM) driven headless by Playwright:

- page weight: every file the dashboard serves (the page, its scripts, styles and
  icon), as shipped and as the browser received them on the first load;
- first paint of the overview with N services: first-contentful-paint, and the
  moment the overview table holds a row for every service (from navigation start,
  median and max over `--loads` reloads of a signed-in page).

Figures are printed, not judged: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from bench.api import http_address
from supervise.protocol.client import Client
from supervise.supervisor.api.store import ApiStore, Role
from supervise.supervisor.dashboard import ASSETS

CHROMIUM = os.environ.get("SUPERVISE_CHROMIUM", "/usr/bin/chromium")


def _config(folder: Path, services: int) -> Path:
    lines = ["[supervisor]", 'state_dir = "state"', 'http = "127.0.0.1:0"']
    for i in range(services):
        lines += [f"[services.s{i:03d}]", 'command = ["sleep", "100000"]']
    path = folder / "supervise.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_running(base: str, token: str, services: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{base}/api/v1/services", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310: our own daemon
            rows = json.loads(response.read())["services"]
        if sum(r["state"] == "RUNNING" for r in rows) == services:
            return
        time.sleep(0.2)
    raise SystemExit(f"the {services} services were not all RUNNING within 120 s")


def _measure(base: str, token: str, services: int, loads: int) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(base + "/")
            page.fill("#token", token)
            page.click("#sign-in button[type=submit]")
            page.wait_for_selector("#services tr[data-service]")
            received = page.evaluate(
                """() => performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))
                    .filter(e => e.name.endsWith('/') || e.name.includes('/ui/'))
                    .reduce((n, e) => n + e.encodedBodySize, 0)"""
            )
            shipped = sum(len(b) for b in ASSETS.values())
            print(
                f"page weight: {shipped / 1024:.1f} KiB in {len(ASSETS)} files as shipped;"
                f" {received / 1024:.1f} KiB received"
            )
            paints, rows = [], []
            for _ in range(loads):
                page.reload()
                done = page.wait_for_function(
                    f"""() => document.querySelectorAll('#services tr[data-service]').length === {services}
                        && performance.now()""",
                    polling="raf",
                    timeout=60_000,
                )
                rows.append(float(done.json_value()))
                fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
                if fcp is not None:
                    paints.append(float(fcp))
            print(
                f"first contentful paint: median {statistics.median(paints):.0f} ms, max {max(paints):.0f} ms"
                f" ({len(paints)} loads)"
            )
            print(
                f"overview with {services} services on screen: median {statistics.median(rows):.0f} ms,"
                f" max {max(rows):.0f} ms ({loads} loads, from navigation start)"
            )
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=200, help="services on the overview (default 200)")
    ap.add_argument("--loads", type=int, default=7, help="page loads measured (default 7)")
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="sv-bench-dash-", dir="/tmp"))
    config = _config(folder, args.services)
    store = ApiStore(folder / "state")
    token, _ = store.create_token("bench", Role.VIEWER, None, None)
    store.close()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervise.supervisor", "start", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(f"ipc://{folder}/state/control.sock", timeout_s=5.0)
    try:
        address = http_address(client, daemon)
        base = f"http://{address}"
        _wait_running(base, token, args.services)
        _measure(base, token, args.services, args.loads)
    finally:
        client.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
