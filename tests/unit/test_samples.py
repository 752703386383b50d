"""The sample history behind the dashboard's sparklines: bounded rings, columns, listeners."""

from __future__ import annotations

import pytest

from supervise.supervisor.core.samples import MAX_POINTS, Point, SampleHistory, capacity_for


def test_capacity_covers_ten_minutes_within_bounds() -> None:
    assert capacity_for(5_000) == 120
    assert capacity_for(1_000) == 600
    assert capacity_for(100) == MAX_POINTS
    assert capacity_for(3_600_000) == 2


def test_a_ring_keeps_only_the_newest_points_oldest_first() -> None:
    history = SampleHistory(3)
    for i in range(5):
        history.record(100.0 + i, {"web": (float(i), 1000 + i)})
    assert [p.cpu_percent for p in history.points("web")] == [2.0, 3.0, 4.0]
    assert [p.rss_bytes for p in history.points("web", 2)] == [1003, 1004]
    assert history.points("nobody") == []


def test_series_are_columns_and_services_without_samples_are_left_out() -> None:
    history = SampleHistory(10)
    history.record(10.04, {"web": (12.345, 2048)})
    history.record(11.0, {"web": (1.0, 4096), "db": (50.0, 1)})
    assert history.series(["web", "db", "idle"], 5) == {
        "web": {"t": [10.0, 11.0], "cpu": [12.3, 1.0], "rss": [2048, 4096]},
        "db": {"t": [11.0], "cpu": [50.0], "rss": [1]},
    }


def test_removed_services_are_forgotten() -> None:
    history = SampleHistory(10)
    history.record(1.0, {"web": (1.0, 1), "old": (1.0, 1)})
    history.retain(["web"])
    assert history.points("old") == [] and len(history.points("web")) == 1


def test_listeners_hear_each_round_and_rounds_are_counted() -> None:
    history = SampleHistory(10)
    heard: list[tuple[float, dict[str, Point]]] = []
    history.listeners.append(lambda t, points: heard.append((t, dict(points))))
    history.record(5.0, {"web": (3.0, 10)})
    history.record(6.0, {})
    assert history.rounds == 2
    assert heard == [(5.0, {"web": Point(5.0, 3.0, 10)}), (6.0, {})]


def test_a_history_needs_room_for_one_point() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        SampleHistory(0)


def test_event_streams_write_before_the_http_guard_would_call_them_idle() -> None:
    from supervise.supervisor.api.resources import SSE_KEEPALIVE_S
    from supervise.supervisor.daemon.http_guard import IDLE_TIMEOUT_S

    assert SSE_KEEPALIVE_S < IDLE_TIMEOUT_S
