"""The peers' own venv (bench/.venv): Circus and supervisord from PyPI, never installed globally."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
# Versions that install and run together on Python 3.11 (circus 0.19 works with current pyzmq/tornado).
REQUIREMENTS = [
    "circus==0.19.0",
    "supervisor==4.3.0",
    "pyzmq==27.3.0",
    "tornado==6.6.1",
    "psutil==7.2.2",
]
PACKAGES = ["circus", "supervisor", "pyzmq", "tornado", "psutil"]


def python() -> Path:
    return VENV / "bin" / "python"


def pythonpath() -> Path:
    """A folder holding only a `bench` link: the peers' agent imports bench from it, while the
    repo root stays off their path (its supervisor/ folder would shadow supervisord's package)."""
    return VENV / "benchpath"


def _versions() -> dict[str, str] | None:
    probe = (
        "import json, importlib.metadata as m, circus, supervisor.xmlrpc; "
        "print(json.dumps({p: m.version(p) for p in %r}))"
    )
    if not python().exists():
        return None
    try:
        out = subprocess.run(
            [str(python()), "-c", probe % PACKAGES],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=VENV,
            check=False,
        )  # not the repo: its supervisor/ would shadow
    except OSError:
        return None
    return json.loads(out.stdout) if out.returncode == 0 else None


def ensure(log) -> dict[str, str]:
    """Create or complete the venv; return the installed versions."""
    versions = _versions()
    if versions is None:
        log(f"creating {VENV} with {' '.join(REQUIREMENTS)}")
        if not python().exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python()), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
        versions = _versions()
        if versions is None:
            raise RuntimeError(f"the peers' venv at {VENV} does not import circus and supervisor")
    link = pythonpath() / "bench"
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(HERE, target_is_directory=True)
    return versions
