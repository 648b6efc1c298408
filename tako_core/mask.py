"""Masking secret values in output: in single strings, in byte streams cut into lines, and in byte
streams passed on as they come (a terminal's).

Stdlib only: both the client and the agent (inside its zipapp) use it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable

MASK = "***"
MIN_LENGTH = 4


class Masker:
    """Replaces every occurrence of a secret value (length >= 4) with `***`.

    A multi-line value (a PEM key) is also masked line by line, since output arrives in lines.
    Shorter values are left alone: masking "1" or "yes" would shred ordinary output and tell an
    onlooker which short strings are secret.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        found = set()
        for value in values:
            found.add(value)
            found.update(part.strip() for part in value.splitlines())
        # Longest first, so a value that contains another is masked whole.
        secrets = sorted((v for v in found if len(v) >= MIN_LENGTH), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None
        # The stream form, for cutting lines: only what can occur within one line.
        encoded = [s.encode() for s in secrets if "\n" not in s]
        self._bytes = re.compile(b"|".join(map(re.escape, encoded))) if encoded else None
        self._encoded = encoded
        self._starts = {s[0] for s in encoded}
        self.longest = max(map(len, encoded), default=0)  # in bytes

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, line: str) -> str:
        if self._pattern is None:
            return line
        return self._pattern.sub(MASK, line)

    def safe_cut(self, data: bytes, at: int) -> int:
        """Where to cut `data` near `at` so that no secret straddles the cut (at or past `at`).

        `data` must reach `longest - 1` bytes past `at`, or a secret starting before the cut could
        still be completed by bytes not yet read."""
        if self._bytes is not None:
            for match in self._bytes.finditer(data, max(at - self.longest + 1, 0), at + self.longest):
                if match.start() < at < match.end():
                    return match.end()
        return at

    def unfinished(self, data: bytes) -> int:
        """The length of the longest end of `data` that begins a secret without completing it:
        what to hold back until the next bytes tell whether the secret follows."""
        for start in range(max(len(data) - self.longest + 1, 0), len(data)):
            if data[start] in self._starts:
                tail = data[start:]
                if any(s.startswith(tail) for s in self._encoded):
                    return len(tail)
        return 0


class LineSplitter:
    """Cuts a byte stream into masked lines; an overlong line comes out in pieces of about `limit`
    bytes, and a secret straddling a piece's cut is still masked (the last `longest - 1` bytes are
    carried until more arrive)."""

    def __init__(self, masker: Masker, limit: int) -> None:
        self._mask = masker
        self._limit = limit
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        pending, out = self._pending + chunk, []
        carry = max(self._mask.longest - 1, 0)
        while True:
            end = pending.find(b"\n")
            if 0 <= end <= self._limit:
                out.append(self._line(pending[:end]))
                pending = pending[end + 1 :]
            elif end > 0 or len(pending) >= self._limit + carry:
                # Secrets hold no newline, so one straddling the cut ends before `end`.
                cut = self._mask.safe_cut(pending, self._limit)
                out.append(self._line(pending[:cut]))
                pending = pending[cut:]
            else:
                self._pending = pending
                return out

    def close(self) -> list[str]:
        """The rest of the stream, once it ended."""
        rest, self._pending = self._pending, b""
        return [self._line(rest)] if rest else []

    def _line(self, raw: bytes) -> str:
        return self._mask(raw.rstrip(b"\r").decode("utf-8", "replace"))


class ChunkMasker:
    """Masks a byte stream passed on in chunks as they arrive (a terminal's output, where a prompt
    never ends its line): each chunk comes out at once, but for an end that begins a secret, held
    until the next chunk completes it or shows it is not one."""

    def __init__(self, masker: Masker) -> None:
        self._mask = masker
        self._pending = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> str:
        data = self._pending + chunk
        # No secret straddles the cut: one that began before the held end would be held too.
        cut = self._mask.safe_cut(data, len(data) - self._mask.unfinished(data))
        self._pending = data[cut:]
        return self._mask(self._decoder.decode(data[:cut]))

    def close(self) -> str:
        """The rest of the stream, once it ended."""
        rest, self._pending = self._pending, b""
        return self._mask(self._decoder.decode(rest, final=True))
