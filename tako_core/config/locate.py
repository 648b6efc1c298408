"""Where a key or value sits in a TOML text.

tomlkit keeps no positions, so this scans the text once more (after tomlkit accepted it) and indexes
every key, table header, value and array element by its path, e.g. `("envs", "production", "servers", 1)`.
The scanner follows the TOML grammar just far enough to skip strings, arrays and inline tables; on
anything it does not expect it stops, and lookups fall back to the nearest indexed ancestor.
"""

from __future__ import annotations

import bisect
import contextlib

KeyPath = tuple[str | int, ...]
Position = tuple[int, int]  # (line, column), both 1-based

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b", '"': '"', "\\": "\\"}
_HEX_LEN = {"x": 2, "u": 4, "U": 8}
_SCALAR_END = frozenset(",]}#\r\n")


class _Stop(Exception):
    """The text is not what the scanner understands from here on."""


class Locator:
    """Positions of keys and values in one TOML text."""

    def __init__(self, source: str) -> None:
        self._keys: dict[KeyPath, int] = {}
        self._values: dict[KeyPath, int] = {}
        self._line_starts = [0] + [i + 1 for i, ch in enumerate(source) if ch == "\n"]
        scanner = _Scanner(source, self._keys, self._values)
        # On text it does not understand, keep what was indexed before that point.
        with contextlib.suppress(_Stop, IndexError):
            scanner.document()
        self._length = len(source)
        self._complete = scanner.i >= len(source)
        self._definitions = scanner.definitions
        # Where a key or table is defined a second time (TOML forbids it), if the scanner saw one.
        self.duplicate = None if scanner.duplicate is None else self._position(scanner.duplicate)

    def key(self, path: KeyPath) -> Position:
        """Where the key (or table header) of `path` is written, else its nearest indexed ancestor."""
        for end in range(len(path), 0, -1):
            offset = self._keys.get(path[:end], self._values.get(path[:end]))
            if offset is not None:
                return self._position(offset)
        return (1, 1)

    def value(self, path: KeyPath) -> Position:
        """Where the value of `path` starts, else where its key is."""
        offset = self._values.get(path)
        return self._position(offset) if offset is not None else self.key(path)

    def section(self, path: KeyPath) -> tuple[int, int] | None:
        """The lines (first, end exclusive) of the table `path` when it is written as one `[path]`
        header with all its keys below it; None for any other form (dotted keys, inline, sub-tables)."""
        headers = [(offset, other) for offset, other, is_header in self._definitions if is_header]
        own = [offset for offset, other in headers if other == path]
        if not self._complete or len(own) != 1:
            return None
        start = own[0]
        end = min((offset for offset, _ in headers if offset > start), default=self._length)
        for offset, other, _ in self._definitions:
            if other[: len(path)] == path and other != path and not start < offset < end:
                return None
        end_line = self._position(end)[0] if end < self._length else len(self._line_starts) + 1
        return self._position(start)[0], end_line

    def _position(self, offset: int) -> Position:
        line = bisect.bisect_right(self._line_starts, offset)
        return (line, offset - self._line_starts[line - 1] + 1)


class _Scanner:
    def __init__(self, text: str, keys: dict[KeyPath, int], values: dict[KeyPath, int]) -> None:
        self.text = text
        self.i = 0
        self.keys = keys
        self.values = values
        self.definitions: list[tuple[int, KeyPath, bool]] = []  # (offset, path, is a header)
        self.defined: set[KeyPath] = set()  # keys with a value, and [table] headers
        self.duplicate: int | None = None

    def peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise _Stop
        self.i += 1

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces and tabs; with `newlines`, also line ends and comments."""
        while self.i < len(self.text):
            ch = self.text[self.i]
            if ch in " \t" or (newlines and ch in "\r\n"):
                self.i += 1
            elif newlines and ch == "#":
                self.skip_comment()
            else:
                return

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.i)
        self.i = len(self.text) if end < 0 else end

    def document(self) -> None:
        prefix: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.i >= len(self.text):
                return
            if self.peek() == "[":
                prefix = self.header()
            else:
                self.keyval(prefix)
            self.skip_blank(newlines=False)
            if self.peek() == "#":
                self.skip_comment()
            if self.i < len(self.text) and self.peek() not in "\r\n":
                raise _Stop

    def header(self) -> KeyPath:
        # Array-of-tables headers index like tables: the schema never looks inside them.
        brackets = 2 if self.peek(2) == "[[" else 1
        self.i += brackets
        start = self.i
        path = self.dotted_key(())
        self.definitions.append((start, path, True))
        if brackets == 1:
            self.define(path, start)
        for _ in range(brackets):
            self.skip_blank(newlines=False)
            self.expect("]")
        return path

    def keyval(self, prefix: KeyPath) -> None:
        start = self.i
        path = self.dotted_key(prefix)
        self.definitions.append((start, path, False))
        self.define(path, start)
        self.skip_blank(newlines=False)
        self.expect("=")
        self.skip_blank(newlines=False)
        self.values.setdefault(path, self.i)
        self.value(path)

    def define(self, path: KeyPath, offset: int) -> None:
        if path in self.defined and self.duplicate is None:
            self.duplicate = offset
        self.defined.add(path)

    def dotted_key(self, prefix: KeyPath) -> KeyPath:
        path = prefix
        while True:
            self.skip_blank(newlines=False)
            start = self.i
            path = (*path, self.simple_key())
            self.keys.setdefault(path, start)
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return path
            self.i += 1

    def simple_key(self) -> str:
        ch = self.peek()
        if ch == '"':
            return self.basic_string()
        if ch == "'":
            return self.literal_string()
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in _BARE:
            self.i += 1
        if self.i == start:
            raise _Stop
        return self.text[start : self.i]

    def value(self, path: KeyPath) -> None:
        ch = self.peek()
        if self.peek(3) in ('"""', "'''"):
            self.multiline_string(self.peek(3))
        elif ch == '"':
            self.basic_string()
        elif ch == "'":
            self.literal_string()
        elif ch == "[":
            self.array(path)
        elif ch == "{":
            self.inline_table(path)
        else:
            start = self.i
            while self.i < len(self.text) and self.text[self.i] not in _SCALAR_END:
                self.i += 1
            if self.i == start:
                raise _Stop

    def array(self, path: KeyPath) -> None:
        self.expect("[")
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.i += 1
                return
            self.values.setdefault((*path, index), self.i)
            self.value((*path, index))
            index += 1
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "]":
                raise _Stop

    def inline_table(self, path: KeyPath) -> None:
        self.expect("{")
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "}":
                self.i += 1
                return
            self.keyval(path)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "}":
                raise _Stop

    def basic_string(self) -> str:
        self.expect('"')
        out: list[str] = []
        while True:
            ch = self.text[self.i]  # IndexError at end of text stops the scan
            self.i += 1
            if ch == '"':
                return "".join(out)
            if ch in "\r\n":
                raise _Stop
            if ch == "\\":
                out.append(self.escape())
            else:
                out.append(ch)

    def escape(self) -> str:
        code = self.text[self.i]
        self.i += 1
        if code in _ESCAPES:
            return _ESCAPES[code]
        digits = self.text[self.i : self.i + _HEX_LEN.get(code, 0)]
        if code not in _HEX_LEN or len(digits) != _HEX_LEN[code]:
            raise _Stop
        self.i += len(digits)
        try:
            return chr(int(digits, 16))
        except ValueError:
            raise _Stop from None

    def literal_string(self) -> str:
        self.expect("'")
        end = self.text.find("'", self.i)
        if end < 0 or "\n" in self.text[self.i : end]:
            raise _Stop
        self.i, key = end + 1, self.text[self.i : end]
        return key

    def multiline_string(self, quotes: str) -> None:
        self.i += 3
        while True:
            end = self.text.find(quotes, self.i)
            if end < 0:
                raise _Stop
            if quotes == '"""' and _escaped(self.text, end):
                self.i = end + 1
                continue
            self.i = end + 3
            # Up to two quotes right before the closing delimiter belong to the string.
            for _ in range(2):
                if self.peek() == quotes[0]:
                    self.i += 1
            return


def _escaped(text: str, index: int) -> bool:
    """Whether the character at `index` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1
