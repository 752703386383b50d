"""`Service`: the base class for stateful Python services.

Subclass it and name the class as a target (`target = "pkg.mod:MyService"`).
The runner calls `setup()`, then `run(ctx)` once (a long-running loop that
returns when `ctx.cancelled`), then `teardown()`, even after an error. For a
scheduled service, one instance lives as long as its worker: `setup()` once,
`run_once(ctx, **args)` for every run, `teardown()` when the worker stops.
"""

from __future__ import annotations

from supervise.workers.context import JobContext


class Service:
    """Override `run` (and optionally `setup`/`teardown`)."""

    def setup(self) -> None:
        """Open connections and load state before the first run."""

    def run(self, ctx: JobContext) -> None:
        """The service's work. Return when `ctx.cancelled` becomes true."""
        raise NotImplementedError(f"{type(self).__name__} must override run(self, ctx)")

    def run_once(self, ctx: JobContext, **args: object) -> object:
        """One scheduled run, with the run's arguments; its return value is the run's result."""
        raise NotImplementedError(f"{type(self).__name__} is scheduled and must override run_once(self, ctx, **args)")

    def teardown(self) -> None:
        """Release what `setup` acquired; called on every exit path."""
