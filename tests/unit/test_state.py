"""The per-service state machine, driven by scripted histories on a fake clock."""

from __future__ import annotations

import random
import signal
from dataclasses import replace

import pytest

from supervise.supervisor.core import state as core
from supervise.supervisor.core.clock import FakeClock
from supervise.supervisor.core.errors import InvalidTransition
from supervise.supervisor.core.restart import ExitRules, ExitStatuses, RestartPolicy
from supervise.supervisor.core.state import (
    ArmTimer,
    CancelTimer,
    Emit,
    ExitCause,
    SendWorker,
    SignalGroup,
    Spawn,
    Timer,
)
from supervise.supervisor.core.state import (
    ServiceState as S,
)

POLICY = RestartPolicy(max_restarts=3, window_ms=60_000, backoff_ms=1_000, backoff_max_ms=8_000, stable_after_ms=10_000)


def make_spec(**overrides: object) -> core.ServiceSpec:
    base = core.ServiceSpec(
        restart="on-failure",
        policy=POLICY,
        python=False,
        start_timeout_ms=1_000,
        heartbeat_timeout_ms=5_000,
        stop_signal=signal.SIGTERM,
        stop_timeout_ms=10_000,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


class Driver:
    """Feeds events to one service at the fake clock's time and keeps the last actions."""

    def __init__(self, **spec: object) -> None:
        self.spec = make_spec(**spec)
        self.clock = FakeClock(start_ms=0)
        self.svc = core.Service()
        self.rng = random.Random(7)
        self.actions: list[core.Action] = []
        self.timers: dict[Timer, int] = {}

    def __call__(self, event: core.Event, after_ms: int = 0) -> list[core.Action]:
        self.clock.advance(after_ms)
        self.svc, self.actions = core.step(
            self.svc, event, now_ms=self.clock.monotonic_ms(), spec=self.spec, rng=self.rng
        )
        for a in self.actions:
            if isinstance(a, ArmTimer):
                self.timers[a.timer] = a.at_ms
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.timer, None)
        return self.actions

    def fire(self, timer: Timer) -> list[core.Action]:
        """Advance to the armed timer's time and fire it."""
        at = self.timers.pop(timer)
        return self(core.TimerFired(timer), after_ms=at - self.clock.monotonic_ms())

    def running(self, pid: int = 100) -> None:
        self(core.StartRequested())
        self(core.WorkerSpawned(pid))
        if self.spec.python:
            self(core.HelloReceived())
        else:
            self.fire(Timer.START)
        assert self.svc.state is S.RUNNING

    @property
    def state(self) -> S:
        return self.svc.state

    def kinds(self) -> list[str]:
        return [a.kind for a in self.actions if isinstance(a, Emit)]


def test_command_is_running_once_it_stayed_up_for_start_timeout() -> None:
    d = Driver()
    assert Spawn(1) in d(core.StartRequested())
    assert d.state is S.STARTING
    assert ArmTimer(Timer.START, 1_000) in d(core.WorkerSpawned(100))
    d.fire(Timer.START)
    assert d.state is S.RUNNING and d.svc.pid == 100


def test_command_with_zero_start_timeout_is_running_at_spawn() -> None:
    d = Driver(start_timeout_ms=0)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    assert d.state is S.RUNNING


def test_python_worker_is_running_at_hello_and_its_heartbeats_are_watched() -> None:
    d = Driver(python=True, start_timeout_ms=30_000)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    assert d.state is S.STARTING
    actions = d(core.HelloReceived(), after_ms=300)
    assert d.state is S.RUNNING
    assert CancelTimer(Timer.START) in actions
    assert ArmTimer(Timer.HEARTBEAT, 300 + 5_000) in actions


def test_heartbeats_keep_a_worker_alive_and_the_check_rearms_from_the_last_one() -> None:
    d = Driver(python=True)
    d.running()
    for _ in range(4):
        d(core.HeartbeatReceived(), after_ms=1_000)
    actions = d.fire(Timer.HEARTBEAT)  # at 5 s; the last heartbeat was at 4 s
    assert d.state is S.RUNNING
    assert actions == [ArmTimer(Timer.HEARTBEAT, 4_000 + 5_000)]


def test_silent_worker_is_declared_hung_and_killed_at_once_then_restarted() -> None:
    d = Driver(python=True)
    d.running()
    actions = d.fire(Timer.HEARTBEAT)
    assert d.state is S.STOPPING
    assert "hung" in d.kinds()
    # It failed to answer for heartbeat_timeout: no stop message, no stop_signal, no stop_timeout.
    assert SendWorker("stop") not in actions and SignalGroup(signal.SIGTERM) not in actions
    assert SignalGroup(signal.SIGKILL) in actions
    assert d.timers[Timer.KILL] - d.clock.monotonic_ms() == 1_000  # not stop_timeout (10 s)
    actions = d(core.WorkerExited(None, signal.SIGKILL), after_ms=5)
    assert d.svc.last_exit is not None and d.svc.last_exit.cause is ExitCause.HUNG
    # It had run for 5 s, under stable_after: replaced after the first backoff step, counted as a restart.
    assert d.state is S.BACKOFF and d.svc.restarts == 1
    assert Spawn(2) in d.fire(Timer.BACKOFF)
    assert d.clock.monotonic_ms() <= 5_000 + 5 + 1_000  # heartbeat_timeout + backoff, not + stop_timeout


def test_a_hang_signal_other_than_kill_gets_sigcont_then_sigkill_after_a_short_grace() -> None:
    d = Driver(python=True, hang_signal=signal.SIGABRT)
    d.running()
    actions = d.fire(Timer.HEARTBEAT)
    assert actions.index(SignalGroup(signal.SIGABRT)) < actions.index(SignalGroup(signal.SIGCONT))
    assert SignalGroup(signal.SIGKILL) not in actions
    hung_at = d.clock.monotonic_ms()
    actions = d.fire(Timer.KILL)
    assert d.clock.monotonic_ms() - hung_at == 1_000
    assert SignalGroup(signal.SIGKILL) in actions
    killed = next(a for a in actions if isinstance(a, Emit) and a.kind == "killed")
    assert "hang_signal SIGABRT (1s)" in killed.message


def test_the_hang_grace_never_exceeds_stop_timeout() -> None:
    d = Driver(python=True, hang_signal=signal.SIGTERM, stop_timeout_ms=300)
    d.running()
    d.fire(Timer.HEARTBEAT)
    assert d.timers[Timer.KILL] - d.clock.monotonic_ms() == 300


def test_stable_worker_that_crashes_is_restarted_at_once() -> None:
    d = Driver()
    d.running()
    actions = d(core.WorkerExited(1, None), after_ms=60_000)
    assert d.state is S.STARTING
    assert Spawn(2) in actions
    assert d.svc.last_exit == core.ExitInfo(ExitCause.EXIT, 1, None, d.clock.monotonic_ms())
    assert d.svc.last_error == "worker exited with code 1"


def test_crash_loop_backs_off_doubling_then_goes_fatal() -> None:
    d = Driver()
    delays = []
    d(core.StartRequested())
    for pid in range(100, 104):
        d(core.WorkerSpawned(pid))
        d(core.WorkerExited(1, None), after_ms=50)
        if d.state is S.FATAL:
            break
        assert d.state is S.BACKOFF
        delays.append(d.timers[Timer.BACKOFF] - d.clock.monotonic_ms())
        d.fire(Timer.BACKOFF)
    assert d.state is S.FATAL
    assert "fatal" in d.kinds()
    assert len(delays) == 3
    for failures, delay in enumerate(delays, start=1):
        step = min(8_000, 1_000 * 2 ** (failures - 1))
        assert step / 2 <= delay <= step
    assert d.svc.last_error is not None and "max_restarts = 3" in d.svc.last_error


def test_starting_a_fatal_service_by_hand_resets_its_failures() -> None:
    d = Driver(policy=replace(POLICY, max_restarts=0))
    d.running()
    d(core.WorkerExited(1, None), after_ms=10)
    assert d.state is S.FATAL
    d(core.StartRequested())
    assert d.state is S.STARTING
    assert d.svc.failures == 0 and d.svc.restart_history_ms == () and d.svc.last_error is None


@pytest.mark.parametrize(
    ("restart", "code", "expected"),
    [
        ("on-failure", 0, S.EXITED),
        ("on-failure", 3, S.STARTING),
        ("never", 3, S.EXITED),
        ("always", 0, S.STARTING),
    ],
    ids=["on-failure-clean-exit-stays-down", "on-failure-error-restarts", "never-stays-down", "always-restarts"],
)
def test_restart_mode_decides_after_a_stable_exit(restart: str, code: int, expected: S) -> None:
    d = Driver(restart=restart)
    d.running()
    d(core.WorkerExited(code, None), after_ms=60_000)
    assert d.state is expected


def test_exit_before_start_is_confirmed_counts_as_a_failed_start_even_with_code_0() -> None:
    d = Driver()
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d(core.WorkerExited(0, None), after_ms=100)
    assert d.state is S.BACKOFF
    assert d.svc.failures == 1


def test_stop_sends_stop_signal_then_sigkill_after_stop_timeout() -> None:
    d = Driver(stop_signal=signal.SIGINT, stop_timeout_ms=2_000)
    d.running()
    actions = d(core.StopRequested())
    assert d.state is S.STOPPING
    assert SignalGroup(signal.SIGINT) in actions
    assert d.timers[Timer.KILL] == d.clock.monotonic_ms() + 2_000
    assert d.fire(Timer.KILL)[-1] == SignalGroup(signal.SIGKILL)
    d(core.WorkerExited(None, signal.SIGKILL))
    assert d.state is S.STOPPED
    assert d.svc.last_exit is not None and d.svc.last_exit.cause is ExitCause.STOPPED
    assert d.svc.restarts == 0


def test_python_stop_also_sends_the_stop_message() -> None:
    d = Driver(python=True)
    d.running()
    assert SendWorker("stop") in d(core.StopRequested())


def test_restart_stops_then_spawns_the_next_incarnation() -> None:
    d = Driver()
    d.running()
    d(core.RestartRequested())
    assert d.state is S.STOPPING
    actions = d(core.WorkerExited(0, None), after_ms=20)
    assert Spawn(2) in actions and d.state is S.STARTING
    assert d.svc.restarts == 0  # a user's restart is not a failure


def test_stop_during_backoff_cancels_the_pending_spawn() -> None:
    d = Driver()
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d(core.WorkerExited(1, None), after_ms=10)
    assert d.state is S.BACKOFF
    actions = d(core.StopRequested())
    assert d.state is S.STOPPED and CancelTimer(Timer.BACKOFF) in actions


def test_spawn_failure_records_the_error_and_backs_off() -> None:
    d = Driver()
    d(core.StartRequested())
    d(core.SpawnFailed("ENOENT: /nope not found"))
    assert d.state is S.BACKOFF
    assert d.svc.last_error == "ENOENT: /nope not found"
    assert d.svc.last_exit is not None and d.svc.last_exit.cause is ExitCause.SPAWN_FAILED


def test_python_worker_without_hello_is_killed_at_start_timeout_and_counts_as_failure() -> None:
    d = Driver(python=True, start_timeout_ms=3_000)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d.fire(Timer.START)
    assert d.state is S.STOPPING and "start_timeout" in d.kinds()
    d(core.WorkerExited(None, signal.SIGTERM), after_ms=10)
    assert d.state is S.BACKOFF
    assert d.svc.last_exit is not None and d.svc.last_exit.cause is ExitCause.START_TIMEOUT


@pytest.mark.parametrize(
    ("python", "pause_action", "resume_action"),
    [
        (True, SendWorker("pause"), SendWorker("resume")),
        (False, SignalGroup(signal.SIGSTOP), SignalGroup(signal.SIGCONT)),
    ],
    ids=["python-cooperative", "command-sigstop"],
)
def test_pause_and_resume(python: bool, pause_action: core.Action, resume_action: core.Action) -> None:
    d = Driver(python=python)
    d.running()
    assert pause_action in d(core.PauseRequested())
    assert d.state is S.PAUSED
    assert resume_action in d(core.ResumeRequested())
    assert d.state is S.RUNNING


def test_stopping_a_paused_command_continues_it_so_it_can_exit() -> None:
    d = Driver()
    d.running()
    d(core.PauseRequested())
    actions = d(core.StopRequested())
    assert actions.index(SignalGroup(signal.SIGTERM)) < actions.index(SignalGroup(signal.SIGCONT))


def test_reported_error_is_kept_over_the_exit_description() -> None:
    d = Driver(python=True)
    d.running()
    d(core.ErrorReported("Traceback ...\nValueError: boom"))
    d(core.WorkerExited(1, None), after_ms=60_000)
    assert d.svc.last_error == "Traceback ...\nValueError: boom"


def test_memory_limit_restarts_with_its_own_cause() -> None:
    d = Driver()
    d.running()
    d(core.OverMemory(rss_bytes=400, limit_bytes=300), after_ms=60_000)
    assert d.state is S.STOPPING
    d(core.WorkerExited(None, signal.SIGTERM))
    assert d.svc.last_exit is not None and d.svc.last_exit.cause is ExitCause.MEMORY
    assert d.state is S.STARTING  # it had run stably: restarted at once


@pytest.mark.parametrize(
    "event",
    [
        core.HeartbeatReceived(),
        core.HelloReceived(),
        core.WorkerExited(0, None),
        core.TimerFired(Timer.KILL),
        core.ResumeRequested(),
    ],
    ids=["heartbeat", "hello", "exit", "kill-timer", "resume"],
)
def test_events_that_do_not_apply_to_a_stopped_service_change_nothing(event: core.Event) -> None:
    d = Driver()
    assert d(event) == []
    assert d.svc == core.Service()


def test_every_state_has_a_transition_row_and_illegal_moves_raise() -> None:
    assert set(core.ALLOWED) == set(S)
    with pytest.raises(InvalidTransition):
        core._move(core.Service(), S.RUNNING)


def test_a_watchdog_kills_a_worker_whose_own_code_stops_calling_heartbeat() -> None:
    d = Driver(python=True, watchdog_timeout_ms=3_000)
    d.running()
    assert d.timers[Timer.WATCHDOG] == d.clock.monotonic_ms() + 3_000
    d(core.WatchdogReceived(), after_ms=2_000)
    d(core.HeartbeatReceived(), after_ms=1_000)  # the runtime beats on; the service's code is stuck
    assert d.fire(Timer.WATCHDOG) == [ArmTimer(Timer.WATCHDOG, 2_000 + 3_000)]  # rearmed from the last call
    d(core.HeartbeatReceived(), after_ms=1_500)
    actions = d.fire(Timer.WATCHDOG)
    assert d.state is S.STOPPING and "hung" in d.kinds()
    assert SignalGroup(signal.SIGKILL) in actions and SendWorker("stop") not in actions
    assert d.svc.last_error is not None and "ctx.heartbeat()" in d.svc.last_error


def test_without_a_watchdog_no_watchdog_timer_is_armed() -> None:
    d = Driver(python=True)
    d.running()
    assert Timer.WATCHDOG not in d.timers


def test_a_kill_request_sigkills_at_once_and_respawns_without_the_restart_policy() -> None:
    d = Driver(python=True)
    d.running()
    actions = d(core.KillRequested("run r1 did not stop within cancel_grace"), after_ms=1_000)
    assert d.state is S.STOPPING
    assert SignalGroup(signal.SIGKILL) in actions and SendWorker("stop") not in actions
    assert SignalGroup(signal.SIGTERM) not in actions
    actions = d(core.WorkerExited(None, signal.SIGKILL), after_ms=5)
    assert d.state is S.STARTING and Spawn(2) in actions  # at once, not after a backoff
    assert d.svc.restarts == 0 and d.svc.restart_history_ms == ()


def test_a_kill_request_during_a_graceful_stop_does_not_wait_for_stop_timeout() -> None:
    d = Driver(python=True)
    d.running()
    d(core.RestartRequested())
    assert d.state is S.STOPPING
    actions = d(core.KillRequested("forced"), after_ms=100)
    assert SignalGroup(signal.SIGKILL) in actions
    d(core.WorkerExited(None, signal.SIGKILL))
    assert d.state is S.STARTING


def test_a_kill_request_without_a_worker_changes_nothing() -> None:
    d = Driver(python=True)
    assert d(core.KillRequested("forced")) == []
    assert d.state is S.STOPPED


def test_repeated_spawn_failures_go_through_the_restart_policy_to_fatal() -> None:
    d = Driver()  # max_restarts 3 within 60 s
    d(core.StartRequested())
    for attempt in range(3):
        d(core.SpawnFailed("ENOENT: No such file or directory: /nonexistent/bin/ghost"))
        assert d.state is S.BACKOFF and d.svc.restarts == attempt + 1
        assert Spawn(attempt + 2) in d.fire(Timer.BACKOFF)
    d(core.SpawnFailed("ENOENT: No such file or directory: /nonexistent/bin/ghost"))
    assert d.state is S.FATAL
    assert d.svc.last_exit is not None and d.svc.last_exit.cause is ExitCause.SPAWN_FAILED
    assert d.svc.last_error is not None and d.svc.last_error.startswith(
        "ENOENT: No such file or directory: /nonexistent/bin/ghost"
    )
    assert "max_restarts = 3" in d.svc.last_error
    d(core.StartRequested())  # by hand, once the file is there: a fresh history
    assert d.state is S.STARTING and d.svc.restart_history_ms == ()


def _rules(**sets: ExitStatuses) -> ExitRules:
    return ExitRules(**sets)


def test_a_success_exit_code_is_a_clean_exit_not_restarted_on_failure() -> None:
    d = Driver(exit_rules=_rules(success=ExitStatuses(frozenset({3}))))
    d.running()
    d(core.WorkerExited(3, None), after_ms=60_000)
    assert d.state is S.EXITED and d.svc.last_error is None and d.svc.restarts == 0


@pytest.mark.parametrize(
    ("restart", "end", "restarted"),
    [
        ("on-abnormal", core.WorkerExited(1, None), False),
        ("on-abnormal", core.WorkerExited(None, signal.SIGKILL), True),
        ("on-abort", core.WorkerExited(None, signal.SIGSEGV), True),
        ("on-abort", core.WorkerExited(2, None), False),
        ("on-success", core.WorkerExited(0, None), True),
        ("on-success", core.WorkerExited(1, None), False),
        ("on-watchdog", core.WorkerExited(None, signal.SIGKILL), False),
    ],
)
def test_restart_modes_follow_systemds_table_for_exits(restart: str, end: core.WorkerExited, restarted: bool) -> None:
    d = Driver(restart=restart)
    d.running()
    d(end, after_ms=60_000)
    assert (d.state is S.STARTING) is restarted
    assert (d.state is S.EXITED) is not restarted


@pytest.mark.parametrize(("restart", "restarted"), [("on-abnormal", True), ("on-watchdog", True), ("on-abort", False)])
def test_a_hang_is_a_watchdog_outcome(restart: str, restarted: bool) -> None:
    d = Driver(python=True, restart=restart)
    d.running()
    d.fire(Timer.HEARTBEAT)
    d(core.WorkerExited(None, signal.SIGKILL), after_ms=60_000)
    assert (d.state is S.STARTING) is restarted


@pytest.mark.parametrize(("restart", "restarted"), [("on-abnormal", True), ("on-abort", False)])
def test_a_start_timeout_is_a_timeout_outcome(restart: str, restarted: bool) -> None:
    d = Driver(python=True, restart=restart, start_timeout_ms=3_000)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d.fire(Timer.START)
    d(core.WorkerExited(None, signal.SIGTERM))
    assert (d.state is S.BACKOFF) is restarted


def test_restart_prevent_exit_codes_keep_an_always_service_down() -> None:
    d = Driver(restart="always", exit_rules=_rules(prevent=ExitStatuses(frozenset({75}))))
    d.running()
    d(core.WorkerExited(75, None), after_ms=60_000)
    assert d.state is S.EXITED
    assert d.svc.last_exit is not None and d.svc.last_exit.code == 75


def test_restart_force_exit_codes_restart_a_never_service() -> None:
    d = Driver(restart="never", exit_rules=_rules(force=ExitStatuses(frozenset(), frozenset({signal.SIGHUP}))))
    d.running()
    d(core.WorkerExited(None, signal.SIGHUP), after_ms=60_000)
    assert d.state is S.STARTING and d.svc.restarts == 1


def test_a_clean_exit_before_the_start_is_confirmed_is_still_a_failed_start() -> None:
    d = Driver(exit_rules=_rules(success=ExitStatuses(frozenset({3}))))
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d(core.WorkerExited(0, None), after_ms=100)
    assert d.state is S.BACKOFF


def _notify(**fields: str) -> core.Notified:
    return core.Notified(fields)


def test_a_notify_service_is_running_on_ready_not_at_start_timeout() -> None:
    d = Driver(notify=True, start_timeout_ms=30_000, watchdog_timeout_ms=2_000)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d(_notify(STATUS="warming up"), after_ms=500)
    assert d.state is S.STARTING and d.svc.notify_status == "warming up"
    actions = d(_notify(READY="1", STATUS="serving", MAINPID="100"), after_ms=500)
    assert d.state is S.RUNNING and d.svc.ready and d.svc.main_pid == 100 and d.svc.notify_status == "serving"
    assert CancelTimer(Timer.START) in actions and ArmTimer(Timer.WATCHDOG, 1_000 + 2_000) in actions
    d(_notify(WATCHDOG="1"), after_ms=1_500)
    assert d.fire(Timer.WATCHDOG) == [ArmTimer(Timer.WATCHDOG, 2_500 + 2_000)]
    actions = d.fire(Timer.WATCHDOG)
    assert d.state is S.STOPPING and SignalGroup(signal.SIGKILL) in actions
    assert d.svc.last_error is not None and "did not send WATCHDOG=1" in d.svc.last_error


def test_a_notify_service_without_ready_fails_its_start() -> None:
    d = Driver(notify=True, start_timeout_ms=3_000)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d.fire(Timer.START)
    assert d.state is S.STOPPING and d.svc.kill_cause is ExitCause.START_TIMEOUT
    assert d.svc.last_error is not None and d.svc.last_error.startswith(
        "no READY=1 (sd_notify) within start_timeout (3s)"
    )


def test_a_zero_start_timeout_does_not_make_a_notify_service_running_at_spawn() -> None:
    d = Driver(notify=True, start_timeout_ms=0)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    assert d.state is S.STARTING


def test_reloading_lasts_until_ready_and_stopping_is_recorded() -> None:
    d = Driver(notify=True)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d(_notify(READY="1"))
    d(_notify(RELOADING="1"))
    assert d.svc.notify_phase == "reloading" and "reloading" in d.kinds()
    d(_notify(READY="1"))
    assert d.svc.notify_phase is None and d.state is S.RUNNING
    d(_notify(STOPPING="1"))
    assert d.svc.notify_phase == "stopping" and "stopping" in d.kinds()


def test_watchdog_trigger_is_the_watchdog_action_at_once() -> None:
    d = Driver(notify=True)
    d(core.StartRequested())
    d(core.WorkerSpawned(100))
    d(_notify(READY="1"))
    actions = d(_notify(WATCHDOG="trigger"))
    assert d.state is S.STOPPING and SignalGroup(signal.SIGKILL) in actions and d.svc.kill_cause is ExitCause.HUNG


def test_notify_messages_to_a_simple_service_or_a_new_incarnation_start_afresh() -> None:
    d = Driver()
    d.running()
    assert d(_notify(READY="1", STATUS="x")) == [] and d.svc.notify_status is None
    n = Driver(notify=True)
    n(core.StartRequested())
    n(core.WorkerSpawned(100))
    n(_notify(READY="1", STATUS="serving", MAINPID="100"))
    n(core.WorkerExited(1, None), after_ms=60_000)
    assert n.state is S.STARTING and not n.svc.ready
    assert n.svc.notify_status is None and n.svc.main_pid is None
