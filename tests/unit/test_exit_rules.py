"""Whether a worker is restarted: systemd's Restart= table, success / prevent / force exit statuses."""

from __future__ import annotations

import signal

import pytest

from supervise.supervisor.core.restart import RESTART_ON, ExitRules, ExitStatuses, Outcome, wants_restart

O = Outcome
# systemd.service(5), "Table 2. Exit causes and the effect of the Restart= settings".
SYSTEMD_TABLE = {
    "never": set(),
    "always": {O.CLEAN, O.EXIT_CODE, O.SIGNAL, O.TIMEOUT, O.WATCHDOG},
    "on-success": {O.CLEAN},
    "on-failure": {O.EXIT_CODE, O.SIGNAL, O.TIMEOUT, O.WATCHDOG},
    "on-abnormal": {O.SIGNAL, O.TIMEOUT, O.WATCHDOG},
    "on-watchdog": {O.WATCHDOG},
    "on-abort": {O.SIGNAL},
}


@pytest.mark.parametrize("mode", sorted(SYSTEMD_TABLE))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_each_mode_restarts_after_the_outcomes_systemd_does(mode: str, outcome: Outcome) -> None:
    assert wants_restart(mode, outcome, ExitRules()) is (outcome in SYSTEMD_TABLE[mode])


def test_every_mode_is_in_the_table() -> None:
    assert set(RESTART_ON) == set(SYSTEMD_TABLE)


def test_exit_0_and_success_exit_codes_are_clean() -> None:
    rules = ExitRules(success=ExitStatuses(frozenset({3}), frozenset({signal.SIGTERM})))
    assert rules.outcome(0, None) is O.CLEAN
    assert rules.outcome(3, None) is O.CLEAN
    assert rules.outcome(None, signal.SIGTERM) is O.CLEAN
    assert rules.outcome(4, None) is O.EXIT_CODE
    assert rules.outcome(None, signal.SIGKILL) is O.SIGNAL
    assert ExitRules().outcome(None, signal.SIGTERM) is O.SIGNAL  # not clean unless listed


def test_prevent_wins_over_the_mode_and_force_over_the_mode() -> None:
    rules = ExitRules(prevent=ExitStatuses(frozenset({75})), force=ExitStatuses(frozenset(), frozenset({signal.SIGHUP})))
    assert not wants_restart("always", O.EXIT_CODE, rules, 75, None)
    assert wants_restart("always", O.EXIT_CODE, rules, 76, None)
    assert wants_restart("never", O.SIGNAL, rules, None, signal.SIGHUP)
    assert wants_restart("on-success", O.SIGNAL, rules, None, signal.SIGHUP)
    # An end supervise caused (no code, no signal of the process's own) follows the mode alone.
    assert wants_restart("on-failure", O.WATCHDOG, rules)
