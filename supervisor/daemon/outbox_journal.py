"""The notifier's journal: a service event's first durable record, before the store has it.

A service's exit, FATAL or recovery lives in memory; its episode and outbox rows
are written by the history's writer a moment later (or, while the store is
unavailable, once it is back). So that a supervisor killed in between does not
lose the event, the notifier appends it here first, synchronously, on the event
loop: one JSON line, one `write(2)` on a file opened with O_APPEND, which the
kernel keeps when the process dies (it is not fsynced: an OS crash or a power
cut may lose the last lines). The transaction that writes the event's episode
and rows also writes this journal's mark (the highest sequence number committed),
so a line is applied exactly once: at the next start, the lines past the mark
are decided and written, in order, before anything new.

Each start writes a journal of its own, `notify-ID.journal` in the state
directory: a header line `{"journal": ID}`, then `{"seq": N, "obs": {...}}` lines.
A journal left by an earlier start is deleted once its lines are applied. Once
every line is committed and the file has grown past `COMPACT_BYTES`, it is cut
back to its header (the numbering goes on).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from supervise.supervisor.daemon.observation import Observation, observation_from_json, observation_to_json

log = logging.getLogger("supervise.notify")

COMPACT_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Leftover:
    """A journal an earlier start left: its id, its file, and its lines in order."""

    journal: str
    path: Path
    lines: list[tuple[int, Observation]]


class ObservationJournal:
    """Appends observations before they are written to the store; hands back those of earlier starts.

    Args:
        directory: where the journals are kept (the state directory).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Named so that the names sort as the starts came (the time first), whatever the file system's
        # timestamp resolution: two starts within one tick of it must not swap.
        self.journal = f"{time.time_ns():016x}-{os.urandom(4).hex()}"
        self.path = directory / f"notify-{self.journal}.journal"
        self._fd: int | None = None
        self._seq = 0
        self._committed = 0
        self._header = 0
        self._lock = threading.Lock()

    def leftovers(self) -> list[Leftover]:
        """The journals of earlier starts, oldest first (a torn last line is left out)."""
        found = []
        paths = sorted(self.directory.glob("notify-*.journal"))
        for path in paths:
            if path != self.path:
                left = _read(path)
                if left is not None:
                    found.append(left)
        return found

    def start(self) -> None:
        """Begin this start's journal."""
        header = (json.dumps({"journal": self.journal}) + "\n").encode()
        fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        os.write(fd, header)
        self._fd, self._header = fd, len(header)

    def append(self, obs: Observation) -> int | None:
        """Write one observation; its sequence number, or None when it could not be written."""
        with self._lock:
            if self._fd is None:
                return None
            seq = self._seq + 1
            line = (json.dumps({"seq": seq, "obs": observation_to_json(obs)}, separators=(",", ":")) + "\n").encode()
            try:
                os.write(self._fd, line)
            except OSError as exc:
                log.error("cannot append to the notifications journal %s: %s", self.path, exc)
                return None
            self._seq = seq
            return seq

    def committed(self, seq: int) -> None:
        """The store has the observation `seq` (and every one before it): compact when all are in."""
        with self._lock:
            self._committed = max(self._committed, seq)
            if self._fd is None or self._committed < self._seq:
                return
            try:
                if os.fstat(self._fd).st_size > COMPACT_BYTES:
                    os.ftruncate(self._fd, self._header)
            except OSError as exc:
                log.warning("cannot compact the notifications journal %s: %s", self.path, exc)

    def close(self) -> None:
        """Stop appending; the file stays (a clean stop has committed every line: the next start
        finds nothing to apply and deletes it)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _read(path: Path) -> Leftover | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)  # a planted link is not followed
        with os.fdopen(fd, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        log.error("cannot read the notifications journal %s: %s", path, exc)
        return None
    try:
        journal = str(json.loads(lines[0])["journal"])
    except (IndexError, ValueError, KeyError, TypeError):
        log.error("the notifications journal %s has no header; deleting it", path)
        path.unlink(missing_ok=True)
        return None
    found: list[tuple[int, Observation]] = []
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            found.append((int(entry["seq"]), observation_from_json(entry["obs"])))
        except (ValueError, KeyError, TypeError):
            continue  # the line a killed supervisor was writing
    return Leftover(journal, path, found)
