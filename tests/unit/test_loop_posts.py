"""Callbacks posted to the event loop from another thread: on the loop, in order, none lost to one that raises."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from supervise.supervisor.daemon.loop_posts import LoopPosts


def test_callbacks_posted_from_a_thread_run_on_the_loop_in_the_order_posted() -> None:
    async def scenario() -> tuple[list[int], set[int], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        posts = LoopPosts(loop)
        ran: list[int] = []
        threads: set[int] = set()
        done = asyncio.Event()

        def callback(i: int) -> None:
            ran.append(i)
            threads.add(threading.get_ident())
            if i == 3:
                raise ValueError("the fourth fails")
            if i == 99:
                done.set()

        def post_all() -> None:
            for i in range(100):
                posts.post(lambda i=i: callback(i))  # type: ignore[misc]

        poster = threading.Thread(target=post_all)
        poster.start()
        poster.join()  # all posted while the loop is busy here: they wait for one wake-up
        await asyncio.wait_for(done.wait(), 10)
        return ran, threads, reported

    ran, threads, reported = asyncio.run(scenario())
    assert ran == list(range(100))
    assert threads == {threading.get_ident()}  # the loop's thread, not the poster's
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)


def test_posting_to_a_closed_loop_raises_and_keeps_nothing() -> None:
    loop = asyncio.new_event_loop()
    posts = LoopPosts(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        posts.post(lambda: None)
    assert posts._posted == []
