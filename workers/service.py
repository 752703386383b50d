"""`Service`: the base class for stateful Python services.

Subclass it and name the class as a target (`target = "pkg.mod:MyService"`).
The runner calls `setup()`, then `run(ctx)` once (a long-running loop that
returns when `ctx.cancelled`), then `teardown()`, even after an error.
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

    def teardown(self) -> None:
        """Release what `setup` acquired; called on every exit path."""
