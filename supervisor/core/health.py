"""What "healthy" means: one definition for `status`, `/health`, `metrics` and the dashboard.

A service is healthy when it is up (RUNNING or PAUSED); a scheduled service also
between its runs, whatever its worker is doing, unless it is FATAL; a
non-critical service also when it is deliberately down (STOPPED, EXITED). The
supervisor is healthy when every critical service is: a critical service that is
FATAL, in BACKOFF or still STARTING makes it unhealthy until it is up again.
"""

from __future__ import annotations

from collections.abc import Iterable

UP_STATES = frozenset({"RUNNING", "PAUSED"})


def service_healthy(state: str, *, critical: bool, scheduled: bool) -> bool:
    """Whether a service in `state` counts as healthy (see the module's docstring)."""
    if state in UP_STATES:
        return True
    if state == "FATAL":
        return False
    if scheduled:
        return True
    return not critical and state in ("STOPPED", "EXITED")


def supervisor_healthy(services: Iterable[tuple[str, bool, bool]]) -> bool:
    """Every critical service is healthy; `services` yields (state, critical, scheduled)."""
    return all(
        service_healthy(state, critical=True, scheduled=scheduled)
        for state, critical, scheduled in services
        if critical
    )
