"""Whether a worker is restarted: systemd's Restart= table, success / prevent / force exit statuses."""

from __future__ import annotations

import signal

import pytest

from supervise.supervisor.core.restart import RESTART_ON, ExitRules, ExitStatuses, Outcome, wants_restart

# systemd.service(5), "Table 2. Exit causes and the effect of the Restart= settings".
SYSTEMD_TABLE = {
    "never": set(),
    "always": {Outcome.CLEAN, Outcome.EXIT_CODE, Outcome.SIGNAL, Outcome.TIMEOUT, Outcome.WATCHDOG},
    "on-success": {Outcome.CLEAN},
    "on-failure": {Outcome.EXIT_CODE, Outcome.SIGNAL, Outcome.TIMEOUT, Outcome.WATCHDOG},
    "on-abnormal": {Outcome.SIGNAL, Outcome.TIMEOUT, Outcome.WATCHDOG},
    "on-watchdog": {Outcome.WATCHDOG},
    "on-abort": {Outcome.SIGNAL},
}


@pytest.mark.parametrize("mode", sorted(SYSTEMD_TABLE))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_each_mode_restarts_after_the_outcomes_systemd_does(mode: str, outcome: Outcome) -> None:
    assert wants_restart(mode, outcome, ExitRules()) is (outcome in SYSTEMD_TABLE[mode])


def test_every_mode_is_in_the_table() -> None:
    assert set(RESTART_ON) == set(SYSTEMD_TABLE)


def test_exit_0_and_success_exit_codes_are_clean() -> None:
    rules = ExitRules(success=ExitStatuses(frozenset({3}), frozenset({signal.SIGTERM})))
    assert rules.outcome(0, None) is Outcome.CLEAN
    assert rules.outcome(3, None) is Outcome.CLEAN
    assert rules.outcome(None, signal.SIGTERM) is Outcome.CLEAN
    assert rules.outcome(4, None) is Outcome.EXIT_CODE
    assert rules.outcome(None, signal.SIGKILL) is Outcome.SIGNAL
    assert ExitRules().outcome(None, signal.SIGTERM) is Outcome.SIGNAL  # not clean unless listed


def test_prevent_wins_over_the_mode_and_force_over_the_mode() -> None:
    rules = ExitRules(
        prevent=ExitStatuses(frozenset({75})), force=ExitStatuses(frozenset(), frozenset({signal.SIGHUP}))
    )
    assert not wants_restart("always", Outcome.EXIT_CODE, rules, 75, None)
    assert wants_restart("always", Outcome.EXIT_CODE, rules, 76, None)
    assert wants_restart("never", Outcome.SIGNAL, rules, None, signal.SIGHUP)
    assert wants_restart("on-success", Outcome.SIGNAL, rules, None, signal.SIGHUP)
    # An end supervise caused (no code, no signal of the process's own) follows the mode alone.
    assert wants_restart("on-failure", Outcome.WATCHDOG, rules)
