"""The layers, checked on the import graph (transitively, `TYPE_CHECKING` and function-level imports included).

protocol <- workers <- (nothing in supervisor); inside `supervisor/`: the core imports only the
standard library, croniter and itself; the config edge and the store never reach the daemon or
the CLI; only the composition's users (the sync facade, the CLI) import the concrete `Supervisor`;
and there are no import circles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"protocol": "supervise.protocol", "workers": "supervise.workers", "supervisor": "supervise.supervisor"}
CORE = "supervise.supervisor.core"
CONFIG = "supervise.supervisor.config"
DAEMON = "supervise.supervisor.daemon"
CLI = "supervise.supervisor.cli"
STORE = "supervise.supervisor.store"
SUPERVISOR_CLASS = "supervise.supervisor.daemon.supervisor"
# the one root exception every layer raises from; it imports nothing of the project
CORE_MAY_IMPORT = (CORE, "supervise.protocol.errors")
THIRD_PARTY_FOR_CORE = {"croniter"}
IMPURE_MODULES = ("zmq", "asyncio", "subprocess", "os", "time", "psutil", "socket", "threading", "sqlite3", "psycopg")
CLOCK = "supervise.supervisor.core.clock"  # the port time is read through: the one core module that reads it


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def all_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in sorted((REPO / folder).rglob("*.py"))}


@cache
def raw_imports(name: str) -> frozenset[str]:
    """Every module `name` imports, anywhere in its body (project names resolved to modules)."""
    path = all_modules()[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in all_modules() else base)
    return frozenset(found)


def project_imports(name: str) -> set[str]:
    return {m for m in raw_imports(name) if m in all_modules() and m != name}


@cache
def closure(name: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in project_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return frozenset(seen)


def under(prefix: str) -> list[str]:
    return [m for m in all_modules() if m == prefix or m.startswith(prefix + ".")]


def reaching(modules: Iterable[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for m in modules:
        hits = sorted(d for d in closure(m) if d.startswith(forbidden))
        if hits:
            bad[m] = hits
    return bad


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("supervise.protocol", ("supervise.workers", "supervise.supervisor")),
        ("supervise.workers", ("supervise.supervisor",)),
        ("supervise.supervisor", ("supervise.workers",)),
        (CONFIG, (DAEMON, CLI, STORE, "supervise.supervisor.sync")),
        (STORE, (DAEMON, CLI, CONFIG, "supervise.supervisor.sync")),
        (CORE, (DAEMON, CLI, CONFIG, STORE, "supervise.supervisor.sync")),
    ],
)
def test_layers_import_only_downwards(layer: str, forbidden: tuple[str, ...]) -> None:
    assert reaching(under(layer), forbidden) == {}, f"{layer} reaches a layer above it"


def test_core_reaches_only_the_core_the_stdlib_and_croniter() -> None:
    for m in under(CORE):
        project = {d for d in closure(m) if not d.startswith(CORE_MAY_IMPORT)}
        assert not project, f"{m} reaches {sorted(project)}"
        outside = {
            i.split(".")[0]
            for i in raw_imports(m)
            if not i.startswith("supervise.") and i.split(".")[0] not in sys.stdlib_module_names
        }
        assert outside <= THIRD_PARTY_FOR_CORE, f"{m} imports {sorted(outside)}"


@pytest.mark.parametrize("name", [m for m in under(CORE) if m not in (CORE, CLOCK)])
def test_core_modules_do_no_io(name: str) -> None:
    bad = {m for m in raw_imports(name) if m.split(".")[0] in IMPURE_MODULES}
    assert not bad, f"{name} is part of the pure core but imports {sorted(bad)}"
    source = all_modules()[name].read_text()
    assert "datetime.now" not in source and "utcnow" not in source, f"{name} reads the wall clock: take `now`"


def test_only_the_composition_users_import_the_supervisor_class() -> None:
    # the package's public face (names re-exported lazily), the sync facade, the command line
    allowed = {"supervise.supervisor", "supervise.supervisor.sync", *under(CLI)}
    users = {m for m in all_modules() if SUPERVISOR_CLASS in project_imports(m)}
    assert users <= allowed, f"{sorted(users - allowed)} import the concrete Supervisor: depend on a port instead"


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(project_imports(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for m in sorted(all_modules()):
        if m not in index:
            visit(m)
    assert circles == [], f"import circles: {circles}"


def test_only_the_codec_imports_msgpack() -> None:
    users = [m for m in all_modules() if any(i.split(".")[0] == "msgpack" for i in raw_imports(m))]
    assert users == ["supervise.protocol.codec"]


def test_the_daemon_imports_no_driver_web_or_template_library_it_was_not_configured_for() -> None:
    """Each costs megabytes of every daemon's memory: PostgreSQL's driver only for a postgresql
    store or [cluster], aiohttp and pydantic only for the HTTP server, Jinja2 only for templates."""
    code = (
        "import sys, supervise.supervisor.daemon.supervisor, supervise.supervisor.cli.main;"
        "heavy = [m for m in ('psycopg', 'aiohttp', 'pydantic', 'jinja2') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
