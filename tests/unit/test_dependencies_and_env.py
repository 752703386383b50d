"""Pure parts of runtime configuration: dependency checks and orders, environment interpolation."""

from __future__ import annotations

import pytest

from supervise.supervisor.config.interpolate import expand, interpolate
from supervise.supervisor.core.dependencies import find_cycle, find_problems, stop_layers


def test_a_cycle_is_reported_as_a_path() -> None:
    assert find_cycle({"web": ["api"], "api": ["db", "web"], "db": []}) == ["web", "api", "web"]
    assert find_cycle({"web": ["db"], "db": []}) is None


def test_unknown_and_self_requirements_are_problems() -> None:
    problems = find_problems({"web": ["dbb"], "db": ["db"]})
    assert ("web", 'unknown service "dbb"') in problems
    assert ("db", "requires itself") in problems


def test_dependents_stop_before_what_they_require() -> None:
    requires = {"web": ["api"], "api": ["db"], "db": [], "cron": []}
    assert stop_layers(requires, ["db", "api", "web", "cron"]) == [["web", "cron"], ["api"], ["db"]]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("x-${A:-dflt}-y", {}, "x-dflt-y"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("cost $$5", {}, "cost $5"),
        ("no refs", {}, "no refs"),
    ],
    ids=["set", "default", "empty-uses-default", "escaped-dollar", "plain"],
)
def test_expand(text: str, env: dict[str, str], expected: str) -> None:
    assert expand(text, env) == expected


def test_interpolation_names_the_key_of_a_missing_variable_and_leaves_http_fields_to_the_worker() -> None:
    data = {
        "services": {
            "web": {"command": "run ${BIN}", "env": {"DB": "${DB_URL}"}},
            "hook": {"action": "http", "url": "https://x.test/${PATH_PART}", "headers": {"A": "Bearer ${TOKEN}"}},
        }
    }
    result, problems = interpolate(data, {"BIN": "/bin/app"})
    assert result["services"]["web"]["command"] == ["run", "/bin/app"]  # split, then expanded per argument
    assert problems == [(("services", "web", "env", "DB"), "variable ${DB_URL} is not set (use ${DB_URL:-default})")]
    assert result["services"]["hook"]["headers"] == {"A": "Bearer ${TOKEN}"}


def test_supervise_variables_override_supervisor_keys() -> None:
    result, _ = interpolate(
        {"supervisor": {"state_dir": "a"}}, {"SUPERVISE_STATE_DIR": "/srv/b", "SUPERVISE_HTTP": "127.0.0.1:1"}
    )
    assert result["supervisor"] == {"state_dir": "/srv/b", "http": "127.0.0.1:1"}
