"""What a cluster node must do to match the runtime services the cluster's store holds.

Pure: no I/O, no clock. In cluster mode the services added at runtime (and their
schedules and pause state) are rows in the shared store, each with a revision
drawn from one sequence, bumped on every change (docs/cluster.md). A node keeps
what it applied; `plan_sync` compares the two and says what to add, update,
remove, pause or resume here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Applied", "Change", "Stored", "Step", "order_adds", "plan_config_pauses", "plan_sync"]


@dataclass(frozen=True, slots=True)
class Stored:
    """A runtime service's row in the cluster's store, without its spec."""

    revision: int  # bumped on every change (spec or pause), from one sequence for the cluster
    spec_revision: int  # the revision at which the spec last changed
    paused: bool


@dataclass(frozen=True, slots=True)
class Applied:
    """What this node applied of a row: its revisions and pause state.

    `present` is False when the row's spec could not be loaded here (it is tried
    again when the row changes)."""

    revision: int
    spec_revision: int
    paused: bool
    present: bool = True


class Change(StrEnum):
    """What a node does about one runtime service."""

    ADD = "add"
    """In the store, not here: register it (and apply its pause state)."""
    UPDATE = "update"
    """Its spec changed: replace it here (and apply its pause state)."""
    REMOVE = "remove"
    """Here, no longer in the store: stop and forget it."""
    PAUSE = "pause"
    """Only its pause state changed: stop firing."""
    RESUME = "resume"
    """Only its pause state changed: fire again."""
    ADOPT = "adopt"
    """A newer revision with nothing to do here (e.g. pause then resume): remember it."""
    SHADOWED = "shadowed"
    """A service of this node's config has the name: the config's wins here."""


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    change: Change


def plan_sync(applied: Mapping[str, Applied], stored: Mapping[str, Stored], local: Set[str]) -> list[Step]:
    """The changes that bring this node to the store's runtime services.

    Args:
        applied: what this node applied, by service name.
        stored: the store's rows, by service name.
        local: names of this node's other services (declared in its config), which a
            stored row of the same name never replaces.

    Returns:
        Removals first (a name may be removed and added again), then the other steps by name.
        A row older than what was applied (a read that started before this node's own
        write) changes nothing.
    """
    removals = [Step(name, Change.REMOVE) for name in sorted(applied) if name not in stored]
    steps: list[Step] = []
    for name in sorted(stored):
        row, mine = stored[name], applied.get(name)
        if mine is None:
            steps.append(Step(name, Change.SHADOWED if name in local else Change.ADD))
        elif row.revision <= mine.revision:
            continue
        elif not mine.present:
            steps.append(Step(name, Change.ADD))
        elif row.spec_revision != mine.spec_revision:
            steps.append(Step(name, Change.UPDATE))
        elif row.paused != mine.paused:
            steps.append(Step(name, Change.PAUSE if row.paused else Change.RESUME))
        else:
            steps.append(Step(name, Change.ADOPT))
    return removals + steps


def plan_config_pauses(
    applied: Mapping[str, int], stored: Mapping[str, Stored], declared: Set[str]
) -> tuple[dict[str, bool], dict[str, int]]:
    """What a node does about the cluster's pause state of config-declared scheduled services.

    Args:
        applied: the revision of each row this node applied, by service name.
        stored: the store's `config_pauses` rows, by service name.
        declared: the services this node's config declares (runtime services excluded).

    Returns:
        (the pause state to apply, by name: rows newer than what was applied, of services
        declared here; what is then applied, by name). A row of a service this node does not
        declare is not applied and not remembered, so it is applied once the service is
        declared here (a reload).
    """
    todo: dict[str, bool] = {}
    now: dict[str, int] = {}
    for name in sorted(stored):
        if name not in declared:
            continue
        row = stored[name]
        mine = applied.get(name)
        if mine is None or row.revision > mine:
            todo[name] = row.paused
        now[name] = max(row.revision, mine or 0)
    return todo, now


def order_adds(requires: Mapping[str, Sequence[str]], present: Set[str]) -> tuple[list[str], list[str]]:
    """The services to add, each after the ones it requires, and those whose requirements
    are neither present nor among them (they wait for a later round).

    Args:
        requires: for each service to add, the services it requires.
        present: the services already here.
    """
    ordered: list[str] = []
    have = set(present)
    waiting = dict(sorted(requires.items()))
    progress = True
    while waiting and progress:
        progress = False
        for name, needs in list(waiting.items()):
            if all(n in have for n in needs):
                ordered.append(name)
                have.add(name)
                del waiting[name]
                progress = True
    return ordered, list(waiting)
