"""Metric aggregation (pure), the events ring, and the Prometheus view of a snapshot."""

from __future__ import annotations

import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervise.supervisor.core.metrics import (
    MEMORY_SAMPLES_OVER,
    CarryOver,
    DurationWindow,
    MetricsBook,
    ProcessStats,
    count_within,
    decide_over_memory,
    percentile,
)
from supervise.supervisor.daemon import exposition
from supervise.supervisor.daemon.events import EventLog
from supervise.supervisor.daemon.observability import service_healthy


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([7.0], 0.99, 7.0),
        ([float(i) for i in range(1, 101)], 0.5, 50.0),
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 21)], 0.95, 19.0),
        ([1.0, 2.0, 3.0], 1.0, 3.0),
    ],
    ids=["empty", "one", "p50-of-100", "p95-of-100", "p99-of-100", "p95-of-20-no-float-drift", "max"],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_duration_window_keeps_only_the_last_runs_but_counts_all() -> None:
    window = DurationWindow(size=100)
    for ms in range(1, 10_001):
        window.add(float(ms))
    assert len(window) == 100  # memory is flat however many runs finished
    assert window.count == 10_000 and window.sum_ms == sum(range(1, 10_001))
    q = window.quantiles()
    assert q[0.5] == 9950.0 and q[0.99] == 9999.0  # the window is the last 100: 9901..10000


def test_carry_over_keeps_counters_monotonic_across_worker_restarts() -> None:
    c = CarryOver()
    c.update(1, {"messages": 10, "errors": 1})
    c.update(1, {"messages": 25, "errors": 1})
    c.update(2, {"messages": 3})  # a new incarnation starts from zero
    assert c.totals() == {"messages": 28.0, "errors": 1.0}
    c.update(2, {"messages": 2})  # lower within one incarnation: keep the high-water mark
    assert c.totals()["messages"] == 28.0


def test_memory_limit_acts_only_when_rss_stays_over() -> None:
    streak, fire = decide_over_memory(0, 200, 100)
    assert (streak, fire) == (1, MEMORY_SAMPLES_OVER == 1)
    streak, fire = decide_over_memory(streak, 50, 100)  # back under: the spike is forgiven
    assert (streak, fire) == (0, False)
    fired = []
    for _ in range(5):
        streak, fire = decide_over_memory(streak, 200, 100)
        fired.append(fire)
    assert fired.count(True) == 1  # once per stay over, not once per sample
    assert decide_over_memory(3, 10**12, None) == (0, False)  # no limit set


def test_restarts_within_the_window() -> None:
    assert count_within([1_000, 50_000, 59_999], now_ms=60_000, window_ms=30_000) == 2
    assert count_within([], now_ms=0, window_ms=1) == 0


def test_book_counts_exits_by_cause_code_and_signal_from_events() -> None:
    book = MetricsBook()
    book.observe_event("web", "spawned", {"pid": 1})
    book.observe_event("web", "exited", {"pid": 1, "code": 1, "signal": None, "cause": "exit"})
    book.observe_event("web", "restarting", {"delay_ms": 0})
    book.observe_event("web", "exited", {"pid": 2, "code": None, "signal": int(signal.SIGKILL), "cause": "signal"})
    book.observe_event("web", "exited", {"pid": 3, "code": None, "signal": int(signal.SIGKILL), "cause": "memory"})
    book.observe_event("web", "spawn_failed", {"error": "ENOENT"})
    snap = book.service("web").snapshot()
    assert snap["spawns"] == 1 and snap["restarts_total"] == 1
    assert snap["exits"] == {"exit": 1, "signal": 1, "memory": 1, "spawn_failed": 1}
    assert snap["exit_codes"] == {"1": 1}
    assert snap["exit_signals"] == {"SIGKILL": 2}
    assert book.events == 6 and book.events_by_kind["exited"] == 3


def test_book_aggregates_runs_by_outcome_with_percentiles() -> None:
    book = MetricsBook()
    for ms in (100, 200, 300, 400):
        book.observe_event("job", "run_finished", {"run_id": "r", "state": "succeeded", "duration_ms": ms})
    book.observe_event("job", "run_finished", {"run_id": "r", "state": "failed", "duration_ms": 1000})
    book.observe_event("job", "run_skipped", {"run_id": "r", "reason": "overlap"})
    snap = book.service("job").snapshot()
    assert snap["runs"] == {"succeeded": 4, "failed": 1, "skipped": 1}
    assert snap["run_duration"]["count"] == 5 and snap["run_duration"]["sum_s"] == 2.0
    assert snap["run_duration"]["p50_s"] == 0.3 and snap["run_duration"]["p99_s"] == 1.0


def test_book_sums_worker_counters_over_incarnations_and_keeps_last_gauges() -> None:
    book = MetricsBook()
    book.observe_worker_metrics("w", 1, {"done": 5, "bogus": "x"}, {"queue": 3})
    book.observe_worker_metrics("w", 2, {"done": 2}, {"queue": 1, "flag": True})
    snap = book.service("w").snapshot()
    assert snap["counters"] == {"done": 7.0}
    assert snap["gauges"] == {"queue": 1.0}  # booleans and strings are not numbers


def test_book_cpu_seconds_survive_a_restart_and_samples_clear_on_exit() -> None:
    book = MetricsBook()
    assert not book.observe_sample("w", 100, ProcessStats(cpu_seconds=4.0, rss_bytes=10), limit_bytes=None)
    book.observe_sample("w", 200, ProcessStats(cpu_seconds=1.5, rss_bytes=10), limit_bytes=None)
    assert book.service("w").snapshot()["cpu_seconds_total"] == 5.5
    book.observe_event("w", "exited", {"cause": "exit", "code": 0, "signal": None})
    assert book.service("w").snapshot()["process"] is None


def test_book_reports_over_memory_after_consecutive_samples() -> None:
    book = MetricsBook()
    results = [book.observe_sample("w", 1, ProcessStats(rss_bytes=500), limit_bytes=100) for _ in range(3)]
    assert results == [i + 1 == MEMORY_SAMPLES_OVER for i in range(3)]


@pytest.mark.parametrize(
    ("state", "critical", "scheduled", "healthy"),
    [
        ("RUNNING", True, False, True),
        ("PAUSED", True, False, True),
        ("FATAL", True, False, False),
        ("FATAL", False, True, False),
        ("BACKOFF", True, False, False),
        ("STARTING", True, False, False),
        ("STOPPED", False, False, True),
        ("STOPPED", True, False, False),
        ("STOPPED", True, True, True),
    ],
)
def test_service_health(state: str, critical: bool, scheduled: bool, healthy: bool) -> None:
    assert service_healthy(state, critical=critical, scheduled=scheduled) is healthy


# -- the events ring -------------------------------------------------------------


def test_event_log_numbers_events_and_replays_since_a_seq() -> None:
    events = EventLog(capacity=5, wall=lambda: 1.5)
    for i in range(3):
        events.emit("a" if i % 2 == 0 else "b", "state", {"to": str(i)})
    assert [e["seq"] for e in events.since(0)["events"]] == [1, 2, 3]
    assert [e["seq"] for e in events.since(1)["events"]] == [2, 3]
    assert [e["seq"] for e in events.since(0, service="a")["events"]] == [1, 3]
    reply = events.since(3)
    assert reply["events"] == [] and reply["last_seq"] == 3 and reply["missed"] == 0
    first = events.since(0)["events"][0]
    assert first == {"v": 1, "seq": 1, "ts": 1.5, "service": "a", "kind": "state", "to": "0"}


def test_event_log_ring_is_bounded_and_says_what_was_missed() -> None:
    events = EventLog(capacity=5)
    for i in range(12):
        events.emit("a", "tick", {"i": i})
    reply = events.since(2)
    assert [e["seq"] for e in reply["events"]] == [8, 9, 10, 11, 12]
    assert reply["missed"] == 5  # 3..7 left the ring
    limited = events.since(0, limit=2)
    assert [e["seq"] for e in limited["events"]] == [8, 9] and limited["more"]


def test_event_log_feeds_listeners() -> None:
    events = EventLog()
    book = MetricsBook()
    events.listeners.append(book.observe_event)
    events.emit("w", "spawned", {"pid": 4}, "")
    assert book.service("w").spawns == 1


# -- Prometheus ------------------------------------------------------------------


def _snapshot() -> dict[str, object]:
    book = MetricsBook()
    book.observe_event("web", "exited", {"cause": "hung", "code": None, "signal": 9})
    book.observe_event("job", "run_finished", {"state": "succeeded", "duration_ms": 250})
    book.observe_worker_metrics("web", 1, {"requests": 12}, {"queue": 4})
    book.observe_sample("web", 1, ProcessStats(cpu_percent=12.5, cpu_seconds=3.0, rss_bytes=1 << 20), None)
    services = []
    for name, state in (("web", "RUNNING"), ("job", "FATAL")):
        services.append(
            {
                "name": name,
                "state": state,
                "critical": True,
                "healthy": state == "RUNNING",
                "restarts": 2,
                "restarts_in_window": 1,
                "uptime": 5.0,
                "heartbeat_age": 0.5,
                "max_memory_bytes": 1 << 30,
                **book.service(name).snapshot(),
            }
        )
    return {
        "supervisor": {
            "pid": 1,
            "version": "0.1.0",
            "uptime": 9.0,
            "healthy": False,
            "process": ProcessStats(rss_bytes=5).as_dict(),
            "events": {"seq": 3, "dropped": 0},
        },
        "services": services,
    }


def test_exposition_parses_with_prometheus_own_parser() -> None:
    registry = exposition.open_registry(_snapshot)
    body, content_type = exposition.render(registry, None)
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("supervise_service_cpu_percent", (("service", "web"),))] == 12.5
    assert samples[("supervise_service_cpu_seconds_total", (("service", "web"),))] == 3.0
    assert samples[("supervise_service_memory_rss_bytes", (("service", "web"),))] == 1 << 20
    assert samples[("supervise_service_restarts_total", (("service", "job"),))] == 2
    assert samples[("supervise_service_exits_total", (("cause", "hung"), ("service", "web")))] == 1
    assert samples[("supervise_service_state", (("service", "job"), ("state", "FATAL")))] == 1
    assert samples[("supervise_service_custom_counter_total", (("name", "requests"), ("service", "web")))] == 12
    assert samples[("supervise_service_run_duration_seconds", (("quantile", "0.5"), ("service", "job")))] == 0.25
    assert samples[("supervise_service_run_duration_seconds_count", (("service", "job"),))] == 1
    assert samples[("supervise_healthy", ())] == 0


def test_exposition_speaks_openmetrics_when_asked() -> None:
    registry = exposition.open_registry(_snapshot)
    body, content_type = exposition.render(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
