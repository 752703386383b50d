"""The restart policy: whether to restart (systemd's rules), backoff with jitter, intensity, giving up.

Pure: no I/O, no clock. Randomness comes in as a `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from supervise.supervisor.core.units import format_duration_ms


class Outcome(StrEnum):
    """How a worker ended, as the rows of systemd's `Restart=` table name it."""

    CLEAN = "clean"  # exit 0, or an exit status in success_exit_codes
    EXIT_CODE = "exit_code"  # any other exit code; also a failed start and a failed spawn (systemd's 203/EXEC)
    SIGNAL = "signal"  # killed by a signal not in success_exit_codes (max_memory's kill too: an OOM kill)
    TIMEOUT = "timeout"  # no start within start_timeout
    WATCHDOG = "watchdog"  # hung: no heartbeat within heartbeat_timeout, or the watchdog missed


_UNCLEAN = frozenset(Outcome) - {Outcome.CLEAN}
RESTART_ON: Mapping[str, frozenset[Outcome]] = {
    "always": frozenset(Outcome),
    "on-success": frozenset({Outcome.CLEAN}),
    "on-failure": _UNCLEAN,
    "on-abnormal": frozenset({Outcome.SIGNAL, Outcome.TIMEOUT, Outcome.WATCHDOG}),
    "on-abort": frozenset({Outcome.SIGNAL}),
    "on-watchdog": frozenset({Outcome.WATCHDOG}),
    "never": frozenset(),
}
"""For each `restart` mode, the outcomes after which the worker is started again (systemd's table)."""


@dataclass(frozen=True, slots=True)
class ExitStatuses:
    """A set of exit statuses: exit codes and signals (systemd's `SuccessExitStatus=` syntax)."""

    codes: frozenset[int] = frozenset()
    signals: frozenset[int] = frozenset()

    def __contains__(self, status: tuple[int | None, int | None]) -> bool:
        code, signal = status
        return (code is not None and code in self.codes) or (signal is not None and signal in self.signals)

    def __bool__(self) -> bool:
        return bool(self.codes or self.signals)


NO_EXIT_STATUSES = ExitStatuses()


@dataclass(frozen=True, slots=True)
class ExitRules:
    """Which exit statuses are clean, and which prevent or force a restart whatever `restart` says."""

    success: ExitStatuses = field(default_factory=ExitStatuses)
    prevent: ExitStatuses = field(default_factory=ExitStatuses)
    force: ExitStatuses = field(default_factory=ExitStatuses)

    def outcome(self, code: int | None, signal: int | None) -> Outcome:
        """The outcome of a worker that ended by itself with `code` or `signal`."""
        if code == 0 or (code, signal) in self.success:
            return Outcome.CLEAN
        return Outcome.SIGNAL if signal is not None else Outcome.EXIT_CODE


def wants_restart(
    mode: str, outcome: Outcome, rules: ExitRules, code: int | None = None, signal: int | None = None
) -> bool:
    """Whether a worker that ended with `outcome` is started again.

    `code` and `signal` are how the process itself ended: they are matched against
    `rules.prevent` (never restart) and then `rules.force` (always restart), whatever
    `mode` says. Pass neither for an end supervise caused (a hang, a start timeout).
    """
    if (code, signal) in rules.prevent:
        return False
    if (code, signal) in rules.force:
        return True
    return outcome in RESTART_ON[mode]


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
