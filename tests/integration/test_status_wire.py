"""The `status` the control socket sends (rows kept encoded between calls) is the library's `status()`."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from supervise.protocol import AsyncClient, decode_reply, encode_reply
from supervise.supervisor import Supervisor
from supervise.supervisor.core.clock import SystemClock
from tests.integration.test_embedding import wait_async

# Memory that grows for a few seconds: each sample of it differs from the one before.
GROWER = (
    "import time\nheld = []\nfor _ in range(300):\n    held.append(bytearray(1 << 16))\n    time.sleep(0.01)\n"
    "time.sleep(1000)"
)


class HeldClock:
    """The system clock, which a test can hold still so that two `status` calls see the same instant."""

    def __init__(self) -> None:
        self._system = SystemClock()
        self.held_ms: int | None = None

    def monotonic_ms(self) -> int:
        return self.held_ms if self.held_ms is not None else self._system.monotonic_ms()

    def wall(self) -> datetime:
        return self._system.wall()


def both_forms(sup: Supervisor, clock: HeldClock) -> tuple[Any, Any]:
    """`status()` and the control socket's encoded status, decoded, at one instant (the daemon's own
    uptime, read from another clock, left out)."""
    clock.held_ms = clock.monotonic_ms()
    try:
        library = decode_reply(encode_reply(1, sup.status())).result
        wire = decode_reply(encode_reply(1, sup.status_prepacked())).result
    finally:
        clock.held_ms = None
    for result in (library, wire):
        del result["supervisor"]["uptime"]
    return library, wire


def states(sup: Supervisor) -> dict[str, str]:
    return {s["name"]: s["state"] for s in sup.status()["services"]}


def test_the_encoded_status_is_the_status_of_the_library_as_services_change(short_dir: Path) -> None:
    config = {
        "supervisor": {"state_dir": str(short_dir / "state"), "sample_interval": "100ms"},
        "services": {
            "steady": {"command": ["sleep", "1000"], "start_timeout": "0s", "processes": 2},
            "quitter": {"command": ["sh", "-c", "exit 3"], "start_timeout": "0s", "restart": "never"},
            "ticker": {"command": ["true"], "every": "1h"},
            "grower": {"command": [sys.executable, "-c", GROWER], "start_timeout": "0s"},
        },
    }

    async def main() -> None:
        clock = HeldClock()
        async with Supervisor(config, clock=clock) as sup:
            settled = {
                "steady": "RUNNING",
                "steady:1": "RUNNING",
                "quitter": "EXITED",
                "ticker": "SCHEDULED",
                "grower": "RUNNING",
            }
            await wait_async(lambda: states(sup) == settled, what="steady running, quitter exited")
            library, wire = both_forms(sup, clock)
            assert wire == library
            assert wire["services"][2]["last_exit"]["code"] == 3
            await asyncio.sleep(0.05)  # the ages move on; the kept rows must follow
            library, wire = both_forms(sup, clock)
            assert wire == library

            # A new sample of the workers' CPU and memory (every 100 ms here) is a row to encode again.
            def grower_rss() -> object:
                return sup.status()["services"][4]["rss_bytes"]

            first = await wait_async(grower_rss, what="a sample of grower")
            await wait_async(lambda: grower_rss() != first, what="another sample of grower")
            library, wire = both_forms(sup, clock)
            assert wire == library

            await sup.act("stop", ["steady:1"])  # a row re-encoded after a step
            await sup.act("start", ["quitter"], wait=False)
            await wait_async(lambda: states(sup)["steady:1"] == "STOPPED", what="steady:1 stopped")
            library, wire = both_forms(sup, clock)
            assert wire == library
            assert [s["state"] for s in wire["services"]][:2] == ["RUNNING", "STOPPED"]

            # Through the control socket, as clients see it.
            async with AsyncClient(sup.config.supervisor.control_endpoint, timeout_s=10) as client:
                remote = await client.call("status")
            assert [s["name"] for s in remote["services"]] == ["steady", "steady:1", "quitter", "ticker", "grower"]
            assert remote["services"][0]["pid"] == sup.status()["services"][0]["pid"]

    asyncio.run(main())
