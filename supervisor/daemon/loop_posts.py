"""Callbacks posted to the event loop from another thread, many for one wake-up of the loop.

The history's writer thread tells the loop that a run's row is committed (so its worker
may now hear of it) once per run: with `call_soon_threadsafe` each, a burst of runs
costs the writer one write to the loop's self-pipe per run, and the loop one wake-up.
`LoopPosts` queues them, and wakes the loop only for the first one posted since the
loop last ran them; the callbacks run in the order they were posted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class LoopPosts:
    """Runs callbacks posted from any thread on `loop`, in order, several per wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._posted: list[Callable[[], None]] = []

    def post(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop soon (from any thread). RuntimeError if the loop is closed."""
        with self._lock:
            self._posted.append(callback)
            if len(self._posted) > 1:
                return  # the loop has been woken for the first and runs them all
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            with self._lock:
                self._posted.clear()
            raise

    def _run(self) -> None:
        with self._lock:
            posted, self._posted = self._posted, []
        for callback in posted:
            try:
                callback()
            except Exception as e:  # noqa: BLE001 - as the loop treats a callback that raises: logged, the rest run
                self._loop.call_exception_handler(
                    {"message": f"exception in posted callback {callback!r}", "exception": e}
                )
