"""Where each key is defined in a TOML text, so that config problems can name a line and column.

`locate_keys` scans the text itself, because `tomllib` returns values without
positions. It is best effort: whatever it cannot follow is simply not located.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervise.supervisor.config.keys import KeyPath

__all__ = ["locate_keys"]


def locate_keys(text: str) -> dict[KeyPath, tuple[int, int]]:
    """Best effort: the (line, column) where each key path is first defined in `text`.

    Knows table headers, dotted keys and inline tables, and skips strings,
    arrays and comments; stops quietly at anything it does not understand.
    """
    scanner = _KeyScanner(text)
    try:
        scanner.document()
    except (IndexError, ValueError, tomllib.TOMLDecodeError):
        pass
    return scanner.found


class _KeyScanner:
    _BARE = re.compile(r"[A-Za-z0-9_-]+")
    _SCALAR_END = re.compile(r"[,\]}\n#]")

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.found: dict[KeyPath, tuple[int, int]] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def document(self) -> None:
        table: KeyPath = ()
        while self._skip(newlines=True) < len(self.text):
            start = self.i
            if self.text[start] == "[":
                brackets = 2 if self.text.startswith("[[", start) else 1
                self.i += brackets
                table = self._key()
                self._record(table, start)
                self._expect("]" * brackets)
            else:
                key = self._key()
                self._record(table + key, start)
                self._expect("=")
                self._value(table + key, record=True)
            if self._skip(newlines=False) < len(self.text) and self.text[self.i] not in "\r\n":
                raise ValueError("expected the end of the line")

    def _record(self, path: KeyPath, at: int) -> None:
        line = bisect.bisect_right(self._line_starts, at)
        for n in range(1, len(path) + 1):  # dotted keys and headers define their parents too
            self.found.setdefault(path[:n], (line, at - self._line_starts[line - 1] + 1))

    def _skip(self, *, newlines: bool) -> int:
        text = self.text
        while self.i < len(text):
            if text[self.i] in " \t" or (newlines and text[self.i] in "\r\n"):
                self.i += 1
            elif text[self.i] == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                break
        return self.i

    def _expect(self, token: str) -> None:
        self._skip(newlines=False)
        if not self.text.startswith(token, self.i):
            raise ValueError(f"expected {token}")
        self.i += len(token)

    def _key(self) -> KeyPath:
        parts = []
        while True:
            self._skip(newlines=False)
            if self.text[self.i] in "\"'":
                start = self.i
                self._string()
                parts.append(str(tomllib.loads("k = " + self.text[start : self.i])["k"]))
            else:
                match = self._BARE.match(self.text, self.i)
                if match is None:
                    raise ValueError("expected a key")
                parts.append(match[0])
                self.i = match.end()
            self._skip(newlines=False)
            if self.text[self.i] != ".":
                return tuple(parts)
            self.i += 1

    def _string(self) -> None:
        text, quote = self.text, self.text[self.i]
        delimiter = quote * 3 if text.startswith(quote * 3, self.i) else quote
        self.i += len(delimiter)
        while not text.startswith(delimiter, self.i):
            if text[self.i] == "\\" and quote == '"':
                self.i += 1
            elif text[self.i] == "\n" and len(delimiter) == 1:
                raise ValueError("unterminated string")
            self.i += 1
        self.i += len(delimiter)
        while len(delimiter) == 3 and text.startswith(quote, self.i):  # """a "quoted" word""""
            self.i += 1

    def _value(self, path: KeyPath, *, record: bool) -> None:
        self._skip(newlines=False)
        opening = self.text[self.i]
        if opening in "\"'":
            self._string()
        elif opening in "[{":
            self.i += 1
            closing = "]" if opening == "[" else "}"
            while self._skip(newlines=True) < len(self.text) and self.text[self.i] != closing:
                if opening == "{":
                    start = self.i
                    key = self._key()
                    if record:
                        self._record(path + key, start)
                    self._expect("=")
                    self._value(path + key, record=record)
                else:
                    self._value(path, record=False)
                if self._skip(newlines=True) < len(self.text) and self.text[self.i] == ",":
                    self.i += 1
                elif self.text[self.i] != closing:
                    raise ValueError(f"expected , or {closing}")
            self.i += 1
        else:
            match = self._SCALAR_END.search(self.text, self.i)
            end = len(self.text) if match is None else match.start()
            if end == self.i:
                raise ValueError("expected a value")
            self.i = end
