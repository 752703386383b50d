"""What a node does to match the cluster's runtime services (core/registration_sync.py)."""

from __future__ import annotations

import pytest

from supervise.supervisor.core.registration_sync import Applied, Change, Step, Stored, order_adds, plan_sync

A = Applied
S = Stored

SCENARIOS = [
    pytest.param({}, {}, set(), [], id="nothing-anywhere"),
    pytest.param({}, {"job": S(3, 3, False)}, set(), [Step("job", Change.ADD)], id="added-elsewhere"),
    pytest.param({}, {"job": S(3, 3, True)}, set(), [Step("job", Change.ADD)], id="added-paused-is-still-an-add"),
    pytest.param({"job": A(3, 3, False)}, {}, set(), [Step("job", Change.REMOVE)], id="removed-elsewhere"),
    pytest.param({"job": A(3, 3, False)}, {"job": S(3, 3, False)}, set(), [], id="in-step"),
    pytest.param(
        {"job": A(3, 3, False)}, {"job": S(5, 5, False)}, set(), [Step("job", Change.UPDATE)], id="spec-changed"
    ),
    pytest.param(
        {"job": A(3, 3, False)}, {"job": S(5, 5, True)}, set(), [Step("job", Change.UPDATE)], id="spec-and-pause"
    ),
    pytest.param({"job": A(3, 3, False)}, {"job": S(4, 3, True)}, set(), [Step("job", Change.PAUSE)], id="paused"),
    pytest.param({"job": A(4, 3, True)}, {"job": S(6, 3, False)}, set(), [Step("job", Change.RESUME)], id="resumed"),
    pytest.param(
        {"job": A(3, 3, False)},
        {"job": S(7, 3, False)},
        set(),
        [Step("job", Change.ADOPT)],
        id="paused-and-resumed-meanwhile",
    ),
    pytest.param(
        {"job": A(8, 8, False)}, {"job": S(5, 5, True)}, set(), [], id="a-read-older-than-this-nodes-own-write"
    ),
    pytest.param({}, {"web": S(2, 2, False)}, {"web"}, [Step("web", Change.SHADOWED)], id="config-name-wins"),
    pytest.param(
        {"job": A(3, 3, False, present=False)},
        {"job": S(4, 4, False)},
        set(),
        [Step("job", Change.ADD)],
        id="unloadable-row-changed-is-tried-again",
    ),
    pytest.param(
        {"job": A(3, 3, False, present=False)}, {"job": S(3, 3, False)}, set(), [], id="unloadable-row-unchanged"
    ),
    pytest.param(
        {"b": A(1, 1, False), "old": A(2, 2, False)},
        {"a": S(9, 9, False), "b": S(10, 1, True)},
        set(),
        [Step("old", Change.REMOVE), Step("a", Change.ADD), Step("b", Change.PAUSE)],
        id="removals-first-then-by-name",
    ),
]


@pytest.mark.parametrize(("applied", "stored", "local", "expected"), SCENARIOS)
def test_plan_sync(
    applied: dict[str, Applied], stored: dict[str, Stored], local: set[str], expected: list[Step]
) -> None:
    assert plan_sync(applied, stored, local) == expected


def test_a_name_removed_and_added_again_is_an_update_because_its_revision_is_new() -> None:
    # one sequence for every revision: the new row's spec revision differs from the old one's
    assert plan_sync({"job": A(3, 3, False)}, {"job": S(9, 9, False)}, set()) == [Step("job", Change.UPDATE)]


def test_adds_come_after_what_they_require_and_the_unresolvable_wait() -> None:
    ordered, waiting = order_adds({"c": ["b"], "b": ["a"], "a": ["db"], "x": ["missing"], "y": []}, {"db"})
    assert ordered == ["a", "b", "c", "y"]
    assert waiting == ["x"]


def test_a_cycle_waits_rather_than_looping() -> None:
    assert order_adds({"a": ["b"], "b": ["a"]}, set()) == ([], ["a", "b"])
