"""The one-way dependency rule: protocol <- workers <- supervisor, and a pure core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"protocol": "supervise.protocol", "workers": "supervise.workers", "supervisor": "supervise.supervisor"}
FORBIDDEN = {
    "protocol": ("supervise.workers", "supervise.supervisor"),
    "workers": ("supervise.supervisor",),
    "supervisor": (),
}
PURE = ["state.py", "restart.py", "units.py", "triggers.py", "cron.py", "trigger_spec.py", "policies.py", "runs.py", "metrics.py", "status.py", "patch.py"]
IMPURE_MODULES = ("zmq", "asyncio", "subprocess", "os", "time", "psutil", "socket")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", list(PACKAGES))
def test_packages_import_only_downwards(folder: str) -> None:
    for path in modules(folder):
        bad = {m for m in imports_of(path) if m.startswith(FORBIDDEN[folder])}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}: the rule is protocol <- workers <- supervisor"


@pytest.mark.parametrize("name", PURE)
def test_core_modules_do_no_io(name: str) -> None:
    path = REPO / "supervisor" / name
    bad = {m for m in imports_of(path) if m.split(".")[0] in IMPURE_MODULES}
    assert not bad, f"supervisor/{name} is part of the pure core but imports {sorted(bad)}"


def test_only_the_codec_imports_msgpack() -> None:
    users = [
        p.relative_to(REPO).as_posix()
        for folder in PACKAGES
        for p in modules(folder)
        if any(m.split(".")[0] == "msgpack" for m in imports_of(p))
    ]
    assert users == ["protocol/codec.py"]
