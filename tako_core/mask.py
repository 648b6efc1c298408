"""Masking secret values in output lines.

Stdlib only: both the client and the agent (inside its zipapp) use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
MIN_LENGTH = 4


class Masker:
    """Replaces every occurrence of a secret value (length >= 4) in a line with `***`.

    Shorter values are left alone: masking "1" or "yes" would shred ordinary output and tell an
    onlooker which short strings are secret.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        # Longest first, so a value that contains another is masked whole.
        secrets = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, line: str) -> str:
        if self._pattern is None:
            return line
        return self._pattern.sub(MASK, line)
