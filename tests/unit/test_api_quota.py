"""Runs per minute per tenant: the sliding window, on explicit times."""

from __future__ import annotations

import pytest

from supervise.supervisor.api.quota import RunQuota


def test_a_tenant_may_start_limit_runs_in_any_minute_and_is_told_when_it_may_again() -> None:
    quota = RunQuota(3)
    assert [quota.take("acme", t) for t in (0.0, 10.0, 20.0)] == [None, None, None]
    assert quota.take("acme", 30.0) == 30  # the start at 0.0 leaves the window at 60.0
    assert quota.take("acme", 59.5) == 1
    assert quota.take("acme", 60.0) is None
    assert quota.used("acme", 60.0) == 3
    assert quota.take("acme", 60.5) == 10


def test_tenants_have_quotas_of_their_own() -> None:
    quota = RunQuota(1)
    assert quota.take("acme", 0.0) is None
    assert quota.take("globex", 0.0) is None
    assert quota.take("acme", 1.0) == 59


def test_a_run_given_back_frees_its_place() -> None:
    quota = RunQuota(1)
    assert quota.take("acme", 0.0) is None
    quota.give_back("acme")
    assert quota.take("acme", 0.5) is None
    quota.give_back("nobody")  # nothing to give back: no error


def test_a_refused_start_is_not_counted() -> None:
    quota = RunQuota(2, window_s=10.0)
    quota.take("acme", 0.0)
    quota.take("acme", 5.0)
    for t in (6.0, 7.0, 8.0):
        assert quota.take("acme", t) is not None
    assert quota.take("acme", 10.0) is None  # only the two counted starts were ever in the window


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        RunQuota(0)


def test_a_tenant_of_its_own_limit_is_held_to_it_even_when_it_is_lowered() -> None:
    quota = RunQuota(100)
    for t in range(5):
        assert quota.take("acme", float(t), limit=5) is None
    assert quota.take("acme", 5.0, limit=5) == 55
    assert quota.take("acme", 6.0, limit=2) == 57  # the 4th newest (t=3.0) must leave: at 63.0
    assert quota.take("acme", 6.0) is None  # the default of 100
