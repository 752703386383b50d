"""Run the example services from a plain (non-asyncio) Python program.

    python examples/embedding.py

Starts the services of examples/supervise.toml in this process, prints their
status every few seconds, and stops them all on Ctrl-C, SIGTERM or
`supervise shutdown -c examples/supervise.toml`. See docs/embedding.md.
"""

from __future__ import annotations

import signal
from pathlib import Path

from supervise.supervisor import SyncSupervisor

CONFIG = Path(__file__).with_name("supervise.toml")


def main() -> None:
    with SyncSupervisor.from_file(CONFIG) as sup:
        signal.signal(signal.SIGTERM, lambda *_: sup.call("shutdown"))
        print(f"supervising from pid {sup.ping()['pid']}; control socket {sup.endpoint}")
        try:
            while not sup.wait(timeout_s=3):
                for svc in sup.status()["services"]:
                    print(f"  {svc['name']:<8} {svc['state']:<9} pid {svc['pid']}")
        except KeyboardInterrupt:
            print("stopping every service")
    print("stopped")


if __name__ == "__main__":
    main()
