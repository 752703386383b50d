"""A registry of jobs by name, so that which function runs is data, not code.

    from supervise.workers import registry

    @registry.job("settle-merchants")
    def settle(ctx, merchant: str) -> None: ...

A service then names it as `target = "myapp.jobs@settle-merchants"` (the module
is imported, which registers its jobs), with its arguments in `args`; both can
be changed at runtime with `supervise update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from supervise.protocol.errors import SuperviseError

F = TypeVar("F", bound=Callable[..., object])


class JobNotFound(SuperviseError, LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        shown = ", ".join(sorted(known)) or "(none)"
        super().__init__(f'no job registered as "{name}"; registered: {shown}')


class Registry:
    """Job names to functions."""

    def __init__(self) -> None:
        self._jobs: dict[str, Callable[..., object]] = {}

    def job(self, name: str) -> Callable[[F], F]:
        """Register the decorated function under `name` (a name may be registered once)."""

        def register(func: F) -> F:
            existing = self._jobs.get(name)
            if existing is not None and existing is not func:
                raise SuperviseError(
                    f'job "{name}" is already registered by {existing.__module__}.{existing.__qualname__}'
                )
            self._jobs[name] = func
            return func

        return register

    def get(self, name: str) -> Callable[..., object]:
        try:
            return self._jobs[name]
        except KeyError:
            raise JobNotFound(name, list(self._jobs)) from None

    def names(self) -> list[str]:
        return sorted(self._jobs)


registry = Registry()
"""The process-wide registry that `package.module@job-name` targets look in."""
