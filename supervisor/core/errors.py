"""Errors raised by the supervisor library, on the protocol's root `SuperviseError`."""

from __future__ import annotations

from dataclasses import dataclass

from supervise.protocol.errors import SuperviseError


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config: where (dotted key path, optional line and column) and what.

    A problem with neither key nor line concerns the file as a whole ("cannot read
    config /etc/supervise.toml: ...") and names it itself, so it renders alone.
    """

    key: str
    problem: str
    line: int | None = None
    column: int | None = None

    def render(self, source: str) -> str:
        if not self.key and self.line is None:
            return self.problem
        where = source
        if self.line is not None:
            where += f":{self.line}" if self.column is None else f":{self.line}:{self.column}"
        return f"{where}: {self.key}: {self.problem}" if self.key else f"{where}: {self.problem}"


class ConfigError(SuperviseError):
    """A config that cannot be used; lists every problem found, each by key path."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


class ServiceNotFound(SuperviseError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        shown = ", ".join(sorted(known)[:20]) or "(none)"
        super().__init__(f'no service named "{name}"; known: {shown}')


class InvalidTransition(SuperviseError):
    """The core was asked for a state change its table forbids: a bug in supervise."""


class AlreadyRunning(SuperviseError):
    """Another supervisor holds the state directory's lock."""
