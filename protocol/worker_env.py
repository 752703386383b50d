"""The worker environment contract: the variables a supervisor sets for each worker it spawns.

Both sides read these names from here: the supervisor when it builds a worker's
environment, the worker runner when it connects back. A command service may read
`SUPERVISE_WORKER_ENDPOINT` (and the token and id) to speak the protocol itself.
"""

from __future__ import annotations

from typing import Final

SERVICE: Final = "SUPERVISE_SERVICE"  # the instance name: web, web:1, ...
WORKER_ID: Final = "SUPERVISE_WORKER_ID"  # NAME/INCARNATION: the worker's routing identity
WORKER_ENDPOINT: Final = "SUPERVISE_WORKER_ENDPOINT"  # the supervisor's workers socket
TOKEN: Final = "SUPERVISE_TOKEN"  # per spawn; every message must carry it
PPID: Final = "SUPERVISE_PPID"  # the supervisor's pid: its death ends the worker
INSTANCE: Final = "SUPERVISE_INSTANCE"  # the supervisor incarnation that spawned the worker
HEARTBEAT_INTERVAL_MS: Final = "SUPERVISE_HEARTBEAT_INTERVAL_MS"
SUPERVISOR_TIMEOUT_MS: Final = "SUPERVISE_SUPERVISOR_TIMEOUT_MS"  # no word from the supervisor this long: exit
TARGET: Final = "SUPERVISE_TARGET"  # "pkg.mod:func" of a Python service
CONCURRENCY: Final = "SUPERVISE_CONCURRENCY"  # a warm worker's runs in flight at once (`concurrency`)
MODE: Final = "SUPERVISE_MODE"  # "runs" (a warm worker of a scheduled service) or "once" (one run, then exit)

# One run of a scheduled service (a command, or a Python target with isolation = "process")
RUN_ID: Final = "SUPERVISE_RUN_ID"
SCHEDULED_TIME: Final = "SUPERVISE_SCHEDULED_TIME"
ATTEMPT: Final = "SUPERVISE_ATTEMPT"
ORIGIN: Final = "SUPERVISE_ORIGIN"
RUN_ARGS: Final = "SUPERVISE_RUN_ARGS"  # the run's arguments as JSON
IDEMPOTENCY_KEY: Final = "SUPERVISE_IDEMPOTENCY_KEY"  # stable across the attempts and re-runs of one occurrence
EPOCH: Final = "SUPERVISE_EPOCH"  # cluster mode: the fencing token of the run's lease, grows with each takeover

MODE_RUNS: Final = "runs"
MODE_ONCE: Final = "once"
