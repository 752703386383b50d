"""The clients' fast way to the control endpoint agrees with the full config loader."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from supervise.supervisor.config.loader import load_config
from supervise.supervisor.config.locate import _supervisor_table, control_endpoint_of


@pytest.mark.parametrize(
    "supervisor_table",
    [
        "",
        '[supervisor]\nstate_dir = "run/here"',
        '[supervisor]\nstate_dir = "/tmp/sv-locate-abs"',
        '[supervisor]\ncontrol = "ipc://ctl/control.sock"',
        '[supervisor]\ncontrol = "ipc://@supervise-locate-test"',
        '[supervisor]\nstate_dir = "${SV_LOCATE_DIR:-fallback}"',
    ],
    ids=["default", "relative-state-dir", "absolute-state-dir", "relative-control", "abstract", "interpolated"],
)
def test_fast_lookup_matches_the_config_loader(tmp_path: Path, supervisor_table: str) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text(supervisor_table + '\n[services.a]\ncommand = ["sleep", "1"]\n')
    assert control_endpoint_of(path) == load_config(path).supervisor.control_endpoint


@pytest.mark.parametrize(
    "text",
    [
        '[services.a]\ncommand = ["sleep", "1"]\n\n[ supervisor ]  # at the end\nstate_dir = "late"\n',
        'supervisor.state_dir = "dotted"\n[services.a]\ncommand = ["sleep", "1"]\n',
        '[supervisor]\nstate_dir = "s"\n[services.a]\ncommand = ["sleep", "1"]\nenv = { X = """[supervisor]""" }\n',
        '[supervisor]\ncontrol = "ipc://${SV_LOCATE_DIR:-d}/c.sock"\n[services.a]\ncommand = ["sleep", "${SV_X:-1}"]\n',
        '[supervisor]\nstate_dir = "s"\nlog_max_bytes = [\n  1,\n]\n[services.a]\ncommand = ["sleep", "1"]\n',
    ],
    ids=["table-last", "dotted-root-key", "multi-line-string", "variables-elsewhere", "multi-line-array"],
)
def test_reading_the_supervisor_table_alone_agrees_with_the_whole_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text(text)
    whole = tomllib.loads(text)
    assert _supervisor_table(text) in (None, {"supervisor": whole.get("supervisor", {})})
    if "= [\n" not in text:  # that table is no valid config; the scan agreeing with tomllib is the point
        assert control_endpoint_of(path) == load_config(path).supervisor.control_endpoint


def test_a_large_config_is_not_parsed_whole() -> None:
    services = "".join(f'[services.w{i}]\ncommand = ["sleep", "1"]\n' for i in range(2000))
    text = '[supervisor]\nstate_dir = "s"\n' + services
    assert _supervisor_table(text) == {"supervisor": {"state_dir": "s"}}
    assert _supervisor_table(services) == {}


def test_environment_overrides_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text("")
    monkeypatch.setenv("SUPERVISE_STATE_DIR", str(tmp_path / "elsewhere"))
    assert (
        control_endpoint_of(path)
        == load_config(path).supervisor.control_endpoint
        == f"ipc://{tmp_path}/elsewhere/control.sock"
    )


def test_what_it_cannot_read_is_left_to_the_loader(tmp_path: Path) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text("[supervisor\n")
    assert control_endpoint_of(path) is None
    assert control_endpoint_of(tmp_path / "missing.toml") is None


@pytest.mark.parametrize(
    "table",
    [
        "  state_dir = \"s\"  # a comment\n\n# another\ncontrol = 'ipc://lit/c.sock'\n",
        'state_dir = "tab\there"\nlog_max_bytes = 5\n',
        'state_dir = "esc\\\\aped"\n',
        '"quoted" = "key"\nstate_dir = "s"\n',
        'state_dir = "s"\nstate_dir = "again"\n',
        'state_dir = "s" # bell \x07 in a comment\n',
        'state_dir = "unterminated\n',
        'state_dir = "s" trailing\n',
    ],
    ids=["plain", "not-a-string", "escape", "quoted-key", "duplicate", "control-char", "unterminated", "trailing"],
)
def test_the_tables_read_without_a_toml_parser_are_read_as_tomllib_reads_them(table: str) -> None:
    text = "[supervisor]\n" + table + '[services.a]\ncommand = ["sleep", "1"]\n'
    try:
        expected: object = {"supervisor": tomllib.loads(text)["supervisor"]}
    except tomllib.TOMLDecodeError:
        expected = None
    assert _supervisor_table(text) == expected
