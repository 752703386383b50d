"""The descriptor watch pauses tcp:// accepts when descriptors run short and resumes them, logging while short."""

from __future__ import annotations

import logging
import os
import resource

import pytest

from supervise.supervisor.daemon.descriptors import DescriptorWatch, open_descriptors


def test_the_watch_pauses_below_the_reserve_and_resumes_with_room_again(caplog: pytest.LogCaptureFixture) -> None:
    used = [100]
    calls: list[str] = []
    watch = DescriptorWatch(
        lambda: calls.append("pause"), lambda: calls.append("resume"), count=lambda: used[0], limit=lambda: 1000
    )

    watch.check()
    assert calls == [] and not watch.paused
    with caplog.at_level(logging.WARNING, logger="supervise"):
        used[0] = 900  # 10 % free: under the 15 % reserve
        watch.check()
        watch.check()  # logged at most once a second
        assert calls == ["pause"] and watch.paused
        assert [r.getMessage() for r in caplog.records] == [
            "descriptors running out: 900 of 1000 in use; not accepting new tcp:// connections until 300 are free"
        ]
        used[0] = 750  # 25 % free: not enough yet
        watch.check()
        assert calls == ["pause"]
        used[0] = 650
        watch.check()
    assert calls == ["pause", "resume"] and not watch.paused and watch.pauses == 1
    assert "accepting tcp:// connections again" in caplog.records[-1].getMessage()


def test_open_descriptors_counts_even_when_none_are_left() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    baseline = open_descriptors()
    assert baseline > 3
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (baseline + 20, hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        assert open_descriptors() >= baseline + len(held) - 1  # the spare makes the listing possible
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
