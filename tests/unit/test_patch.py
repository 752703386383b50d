"""`update`'s table: the current one patched, or replaced."""

from __future__ import annotations

import pytest

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.config.patch import patch_table

NIGHTLY = {"target": "jobs:nightly", "cron": "0 2 * * *", "timeout": "1h"}


def test_set_changes_the_keys_given_and_keeps_the_others() -> None:
    assert patch_table(NIGHTLY, {"cron": "30 2 * * *"}) == {
        "target": "jobs:nightly",
        "cron": "30 2 * * *",
        "timeout": "1h",
    }


def test_unset_removes_a_key() -> None:
    assert patch_table(NIGHTLY, {}, ["timeout"]) == {"target": "jobs:nightly", "cron": "0 2 * * *"}


def test_a_new_trigger_or_executable_replaces_the_old_one() -> None:
    assert patch_table(NIGHTLY, {"every": "5m"}) == {"target": "jobs:nightly", "every": "5m", "timeout": "1h"}
    assert patch_table(NIGHTLY, {"command": ["run.sh"]}) == {
        "command": ["run.sh"],
        "cron": "0 2 * * *",
        "timeout": "1h",
    }


def test_replace_takes_the_table_given_as_the_whole_service() -> None:
    assert patch_table(NIGHTLY, {"cron": "30 2 * * *"}, replace=True) == {"cron": "30 2 * * *"}


def test_the_current_table_is_not_changed() -> None:
    current = dict(NIGHTLY)
    patch_table(current, {"cron": "1 1 * * *"}, ["timeout"])
    assert current == NIGHTLY


@pytest.mark.parametrize(
    ("changes", "unset", "replace", "message"),
    [
        (
            {},
            ["max_memory"],
            False,
            "cannot unset services.t.max_memory: it is not set (set keys: cron, target, timeout)",
        ),
        ({"timeout": "2h"}, ["timeout"], False, "services.t.timeout is both set and unset"),
        ({"cron": "1 1 * * *"}, ["timeout"], True, "unset has no meaning with replace"),
    ],
)
def test_contradictions_are_refused_naming_the_key(
    changes: dict[str, object], unset: list[str], replace: bool, message: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        patch_table(NIGHTLY, changes, unset, replace=replace, service="t")
    assert caught.value.code == ErrorCode.BAD_ARGS and message in str(caught.value)
