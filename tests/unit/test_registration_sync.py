"""What a node does to match the cluster's runtime services (core/registration_sync.py)."""

from __future__ import annotations

import pytest

from supervise.supervisor.core.registration_sync import (
    Applied,
    Change,
    Step,
    Stored,
    order_adds,
    plan_config_pauses,
    plan_sync,
)

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


# -- the pause state of config-declared scheduled services ------------------------------------


def test_a_config_pause_newer_than_applied_is_applied_to_declared_services_only() -> None:
    stored = {"report": S(7, 7, True), "elsewhere": S(8, 8, True), "seen": S(3, 3, False)}
    todo, applied = plan_config_pauses({"seen": 3}, stored, {"report", "seen", "web"})
    assert todo == {"report": True}, "not `elsewhere` (not declared here), not `seen` (applied already)"
    assert applied == {"report": 7, "seen": 3}


def test_a_config_pause_is_applied_again_once_its_service_is_declared_here() -> None:
    stored = {"report": S(5, 5, True)}
    todo, applied = plan_config_pauses({}, stored, set())
    assert (todo, applied) == ({}, {})
    todo, applied = plan_config_pauses(applied, stored, {"report"})  # a reload declared it
    assert (todo, applied) == ({"report": True}, {"report": 5})


def test_a_row_older_than_this_nodes_own_write_changes_nothing() -> None:
    # a read that started before this node paused it (revision 9) still shows revision 6
    todo, applied = plan_config_pauses({"report": 9}, {"report": S(6, 6, False)}, {"report"})
    assert (todo, applied) == ({}, {"report": 9})
