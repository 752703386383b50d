"""The restart policy: backoff with jitter, restart intensity, giving up.

Pure: no I/O, no clock. Randomness comes in as a `random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from supervise.supervisor.core.units import format_duration_ms


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int  # more restarts than this within window_ms gives up
    window_ms: int
    backoff_ms: int  # delay after the first unstable failure
    backoff_max_ms: int
    stable_after_ms: int  # a run this long is stable: restart at once, failures reset


@dataclass(frozen=True, slots=True)
class Restart:
    """Start again after `delay_ms`; `history_ms` and `failures` are the new bookkeeping."""

    delay_ms: int
    history_ms: tuple[int, ...]
    failures: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def backoff_delay_ms(failures: int, policy: RestartPolicy, rng: random.Random) -> int:
    """Delay before restart number `failures` of an unstable worker (1 = first failure).

    Doubles from `backoff_ms` up to `backoff_max_ms`, with equal jitter: a value
    between half the step and the full step, so many services that failed
    together do not all come back in the same millisecond.
    """
    if failures <= 0 or policy.backoff_ms == 0:
        return 0
    step = min(policy.backoff_max_ms, policy.backoff_ms * (2 ** min(failures - 1, 32)))
    return min(policy.backoff_max_ms, int(step / 2 + rng.random() * step / 2))


def next_restart(
    history_ms: tuple[int, ...],
    failures: int,
    *,
    now_ms: int,
    ran_ms: int,
    policy: RestartPolicy,
    rng: random.Random,
) -> Restart | GiveUp:
    """Decide what follows a failure at `now_ms` of a worker that ran for `ran_ms`.

    Args:
        history_ms: when earlier restarts happened (only those still in the window matter).
        failures: consecutive unstable failures before this one.
    Returns:
        `Restart` with the delay, or `GiveUp` when the restart intensity is exceeded.
    """
    recent = tuple(t for t in history_ms if now_ms - t < policy.window_ms)
    if len(recent) >= policy.max_restarts:
        return GiveUp(
            f"{len(recent) + 1} failures within {format_duration_ms(policy.window_ms)} "
            f"(max_restarts = {policy.max_restarts}); not restarting again. "
            "Fix the cause, then 'supervise start' it"
        )
    failures = 0 if ran_ms >= policy.stable_after_ms else failures + 1
    return Restart(backoff_delay_ms(failures, policy, rng), recent + (now_ms,), failures)
