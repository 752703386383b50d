"""The `supervise` command's exit codes, apart from click so that the daemon's entry needs no click."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the command was refused, or a config is invalid (`check`)
    USAGE = 2  # bad command line (click's own code)
    UNREACHABLE = 3  # no supervisor answered at the endpoint
    CONFIG = 78  # EX_CONFIG: the daemon cannot start with this config; don't restart it in a loop
