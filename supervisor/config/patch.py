"""An update's new service table: the current one patched, or a whole replacement.

Pure: tables in, a table out. `update NAME --set k=v` changes the keys given and
keeps the others; `--unset KEY` removes one (back to its default); `--replace`
takes the table given as the whole new one. The result is validated by the
caller as any [services.NAME] table is, so an error names the merged key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.config.schedule import KIND_KEYS

EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"command", "target"}), KIND_KEYS)
"""Keys of which a table has one: setting one drops the others (a trigger replaces the trigger)."""


def patch_table(
    current: Mapping[str, object],
    changes: Mapping[str, object],
    unset: Sequence[str] = (),
    *,
    replace: bool = False,
    service: str = "",
) -> dict[str, object]:
    """The table `current` with `changes` set and `unset` removed, or `changes` alone with `replace`.

    Raises:
        ProtocolError: `bad_args`, naming the key, for an unset of a key the table
            does not have, a key both set and unset, or `unset` with `replace`.
    """
    prefix = f"services.{service}." if service else ""
    if replace:
        if unset:
            raise ProtocolError(
                ErrorCode.BAD_ARGS, "update: unset has no meaning with replace (the table given is the whole service)"
            )
        return dict(changes)
    both = sorted(set(unset) & set(changes))
    if both:
        raise ProtocolError(ErrorCode.BAD_ARGS, f"update: {prefix}{both[0]} is both set and unset; do one")
    table = dict(current)
    for key in unset:
        if key not in table:
            keys = ", ".join(sorted(table)) or "none"
            raise ProtocolError(
                ErrorCode.BAD_ARGS, f"update: cannot unset {prefix}{key}: it is not set (set keys: {keys})"
            )
        del table[key]
    for group in EXCLUSIVE:
        if group & changes.keys():
            for key in group - changes.keys():
                table.pop(key, None)
    table.update(changes)
    return table
