"""The clients' fast way to the control endpoint agrees with the full config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervise.supervisor.config.loader import load_config
from supervise.supervisor.config.locate import control_endpoint_of


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
