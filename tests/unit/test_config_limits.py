"""Configs the parser cannot handle are config errors naming the limit; `${VAR}` in a string command is one argument."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervise.supervisor.config.interpolate import interpolate
from supervise.supervisor.config.loader import load_config, parse_config
from supervise.supervisor.config.nesting import MAX_CONFIG_DEPTH, too_deep
from supervise.supervisor.core.errors import ConfigError

DEPTH_MESSAGE = f"nested more than {MAX_CONFIG_DEPTH} levels deep"


@pytest.mark.parametrize(
    "value",
    [
        "[" * 40 + "]" * 40,  # deeper than the limit, within the TOML parser's reach
        "[" * 3000 + "]" * 3000,  # deeper than the parser's recursion can go
        "{a = " * 600 + "1" + "}" * 600,
    ],
)
def test_deep_nesting_is_a_config_error_naming_the_limit(tmp_path: Path, value: str) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text(f'[services.web]\ncommand = ["true"]\nx = {value}\n')
    with pytest.raises(ConfigError, match=DEPTH_MESSAGE):
        load_config(path)


def test_deep_nesting_built_in_code_is_refused_too() -> None:
    value: object = 1
    for _ in range(MAX_CONFIG_DEPTH + 5):
        value = [value]
    with pytest.raises(ConfigError, match=r"services\.web\.env\.X: values are nested more than"):
        parse_config({"services": {"web": {"command": ["true"], "env": {"X": value}}}})


def test_too_deep_is_iterative_and_exact() -> None:
    value: object = "leaf"
    for _ in range(100_000):  # far past any recursion limit
        value = {"k": value}
    assert too_deep(value) == ("k",) * MAX_CONFIG_DEPTH
    assert too_deep({"a": [[1]]}, limit=3) is None and too_deep({"a": [[[1]]]}, limit=3) == ("a", "0", "0")


def test_start_exits_78_without_a_traceback_on_a_deep_config(tmp_path: Path) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text(
        '[supervisor]\nstate_dir = "state"\n[services.web]\ncommand = ["true"]\nx = ' + "[" * 3000 + "]" * 3000 + "\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "start", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78, result.stderr[-2000:]
    assert DEPTH_MESSAGE in result.stderr and "Traceback" not in result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 1 and DEPTH_MESSAGE in check.stderr and "Traceback" not in check.stderr


def test_a_variable_in_a_string_command_stays_one_argument() -> None:
    environ = {"NAME": "a --delete-everything", "EMPTY_DEFAULT": ""}
    data, problems = interpolate(
        {"services": {"web": {"command": 'echo ${NAME} "${GREETING:-good day}" $$literal'}}}, environ
    )
    assert problems == []
    assert data["services"]["web"]["command"] == ["echo", "a --delete-everything", "good day", "$literal"]
    cfg = parse_config({"services": {"web": {"command": data["services"]["web"]["command"]}}})
    assert cfg.services["web"].command == ("echo", "a --delete-everything", "good day", "$literal")


def test_a_missing_variable_in_a_command_names_the_argument_and_bad_quotes_are_still_reported(tmp_path: Path) -> None:
    _, problems = interpolate({"services": {"web": {"command": "echo ${MISSING}"}}}, {})
    assert problems == [
        (("services", "web", "command", "1"), "variable ${MISSING} is not set (use ${MISSING:-default})")
    ]
    path = tmp_path / "supervise.toml"
    path.write_text('[services.web]\ncommand = "sh -c \'oops"\n')
    with pytest.raises(ConfigError, match="cannot split .* no closing quotation"):
        load_config(path)
