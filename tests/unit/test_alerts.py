"""The no-storm policy: one message when failing starts, digests at most once per min_interval, one on recovery."""

from __future__ import annotations

import pytest

from supervise.supervisor.core.alerts import Alert, AlertGate
from supervise.supervisor.core.clock import FakeClock

ALL = ("failure", "retries_exhausted", "timed_out", "lost", "missed", "fatal", "recovered", "success")
FIVE_MIN = 300_000


def feed(
    gate: AlertGate, clock: FakeClock, event: str, *, on: tuple[str, ...] = ALL, subject: str = "web"
) -> list[Alert]:
    return gate.observe(subject, event, on=on, min_interval_ms=FIVE_MIN, now_ms=clock.monotonic_ms())


def test_the_first_failure_is_sent_at_once_the_next_ones_are_held() -> None:
    gate, clock = AlertGate(), FakeClock()
    (first,) = feed(gate, clock, "failure")
    assert (first.event, first.count, first.counts) == ("failure", 1, {"failure": 1})
    for _ in range(49):
        clock.advance(1_000)
        assert feed(gate, clock, "failure") == []
    assert gate.failing("web")
    assert gate.next_due_ms() == 1_000_000 + FIVE_MIN


def test_a_crash_loop_of_50_failures_then_fatal_is_two_messages_and_fatal_says_how_many() -> None:
    gate, clock = AlertGate(), FakeClock()
    sent = feed(gate, clock, "failure")
    for _ in range(49):
        clock.advance(100)
        sent += feed(gate, clock, "failure")
    sent += feed(gate, clock, "fatal")
    sent += gate.due(clock.monotonic_ms())
    assert [a.event for a in sent] == ["failure", "fatal"]
    assert sent[1].count == 50 and sent[1].counts == {"failure": 49, "fatal": 1}


def test_held_failures_go_out_as_one_digest_per_min_interval() -> None:
    gate, clock = AlertGate(), FakeClock()
    feed(gate, clock, "failure")
    for _ in range(10):
        clock.advance(1_000)
        feed(gate, clock, "failure")
    feed(gate, clock, "timed_out")
    assert gate.due(clock.monotonic_ms()) == []  # min_interval has not passed
    clock.advance(FIVE_MIN)
    (digest,) = gate.due(clock.monotonic_ms())
    assert (digest.event, digest.count, digest.counts) == ("digest", 11, {"failure": 10, "timed_out": 1})
    assert digest.failing_since_ms == 1_000_000
    assert gate.due(clock.monotonic_ms() + FIVE_MIN) == []  # nothing more held
    assert gate.next_due_ms() is None


def test_a_failure_after_min_interval_is_sent_at_once_with_what_was_held() -> None:
    gate, clock = AlertGate(), FakeClock()
    feed(gate, clock, "failure")
    clock.advance(1_000)
    feed(gate, clock, "failure")
    clock.advance(FIVE_MIN)
    (digest,) = feed(gate, clock, "failure")
    assert (digest.event, digest.count) == ("digest", 2)
    clock.advance(FIVE_MIN)
    (alone,) = feed(gate, clock, "failure")
    assert (alone.event, alone.count) == ("failure", 1)


def test_recovery_is_one_message_that_folds_in_the_held_failures() -> None:
    gate, clock = AlertGate(), FakeClock()
    feed(gate, clock, "failure")
    clock.advance(1_000)
    feed(gate, clock, "failure")
    clock.advance(1_000)
    (recovered,) = feed(gate, clock, "success")
    assert (recovered.event, recovered.count, recovered.counts) == ("recovered", 2, {"failure": 1})
    assert recovered.failing_since_ms == 1_000_000
    assert not gate.failing("web")
    assert gate.due(clock.monotonic_ms() + 10 * FIVE_MIN) == []  # the held failure is not sent again
    assert feed(gate, clock, "success") == []  # right after the recovery message: held (rate-limited)


def test_a_thousand_failed_runs_are_at_most_a_few_messages_each_saying_how_many() -> None:
    gate, clock = AlertGate(), FakeClock()
    sent: list[Alert] = []
    for _ in range(1000):
        clock.advance(600)  # 1000 runs in 10 minutes
        sent += feed(gate, clock, "failure")
        sent += gate.due(clock.monotonic_ms())
    sent += feed(gate, clock, "success")
    assert [a.event for a in sent] == ["failure", "digest", "recovered"]
    assert sum(a.count for a in sent[:2]) + sent[2].counts.get("failure", 0) == 1000
    assert sent[2].count == 1000


def test_events_not_in_on_are_not_sent_but_still_open_and_close_episodes() -> None:
    gate, clock = AlertGate(), FakeClock()
    assert feed(gate, clock, "failure", on=("recovered",)) == []
    assert gate.failing("web")
    (recovered,) = feed(gate, clock, "success", on=("recovered",))
    assert recovered.event == "recovered"
    assert feed(gate, clock, "failure", on=("fatal",)) == []
    assert feed(gate, clock, "success", on=("fatal",)) == []  # no recovered: not asked for


def test_successes_outside_an_episode_are_rate_limited_too() -> None:
    gate, clock = AlertGate(), FakeClock()
    (first,) = feed(gate, clock, "success")
    assert first.event == "success"
    for _ in range(5):
        clock.advance(1_000)
        assert feed(gate, clock, "success") == []
    clock.advance(FIVE_MIN)
    (digest,) = gate.due(clock.monotonic_ms())
    assert (digest.event, digest.counts) == ("digest", {"success": 5})
    assert feed(gate, clock, "success", on=("failure",)) == []  # not asked for: nothing held either


def test_subjects_are_independent_and_tags_are_unique_per_subject() -> None:
    gate, clock = AlertGate(), FakeClock()
    a = feed(gate, clock, "failure", subject="a")
    b = feed(gate, clock, "failure", subject="b")
    assert [x.subject for x in a + b] == ["a", "b"]
    a += feed(gate, clock, "success", subject="a")
    a += feed(gate, clock, "failure", subject="a")
    assert len({x.tag for x in a}) == 3


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event"):
        AlertGate().observe("web", "exploded", on=ALL, min_interval_ms=0, now_ms=0)


def test_the_policy_is_a_function_of_the_episode_so_a_stored_episode_goes_on_where_it_was() -> None:
    from supervise.supervisor.core.alerts import Episode, due, observe

    clock = FakeClock()
    episode, sent = observe(Episode(), "web", "failure", on=ALL, min_interval_ms=FIVE_MIN, now_ms=clock.monotonic_ms())
    assert [a.event for a in sent] == ["failure"] and episode.failing
    # what a restarted supervisor, or another node, reads back: an equal value, no hidden state
    reread = Episode(**{f: getattr(episode, f) for f in Episode.__slots__})
    for _ in range(3):
        clock.advance(1_000)
        reread, sent = observe(reread, "web", "lost", on=ALL, min_interval_ms=FIVE_MIN, now_ms=clock.monotonic_ms())
        assert sent == []
    assert (reread.number, reread.failures, dict(reread.held)) == (1, 4, {"lost": 3})
    assert due(reread, "web", clock.monotonic_ms()) == (reread, None)
    assert reread.due_at_ms() == 1_000_000 + FIVE_MIN
    clock.advance(FIVE_MIN)
    after, digest = due(reread, "web", clock.monotonic_ms())
    assert digest is not None and (digest.event, digest.count, digest.tag) == ("digest", 3, "e1.m2")
    assert after.held == {} and after.sent == 2
    assert episode.held == {}, "the episode passed in is never changed"


def test_a_new_episode_after_a_recovery_gets_new_tags() -> None:
    from supervise.supervisor.core.alerts import Episode, observe

    episode = Episode()
    tags = []
    for at, event in ((0, "failure"), (1_000, "success"), (2_000, "failure")):
        episode, sent = observe(episode, "job", event, on=ALL, min_interval_ms=0, now_ms=at)
        tags += [(a.event, a.tag) for a in sent]
    assert tags == [("failure", "e1.m1"), ("recovered", "e1.m2"), ("failure", "e2.m3")]
