"""A service's Unix account: who its worker runs as, read from the password and group databases.

`user = "NAME"` makes the worker that user entirely: its uid, its primary group,
its supplementary groups, and `HOME`, `USER`, `LOGNAME`, `SHELL` from its
password entry. Changing only the uid would leave the worker in the
supervisor's groups (root's, often) with the supervisor's home.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Account:
    """One user's identity, as a worker started for it gets it."""

    name: str
    uid: int
    gid: int  # primary group
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str
    shell: str

    @classmethod
    def lookup(cls, name: str) -> Account:
        """The account of user `name`; raises KeyError if there is none."""
        entry = pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_shell or "/bin/sh")

    def environment(self) -> Mapping[str, str]:
        """The variables a login of this user would have: HOME, USER, LOGNAME, SHELL."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "SHELL": self.shell}

    def switch_needed(self) -> bool:
        """True when the worker must change identity (root starting another user, or root itself)."""
        return os.geteuid() == 0
