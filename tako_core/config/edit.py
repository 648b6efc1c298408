"""Text edits tomlkit does not do well: removing a table together with the comments that belong to it.

tomlkit files a comment line under the table above it, so deleting `[servers.a]` through tomlkit also
deletes the comment written above `[servers.b]`. Cutting the lines of the section avoids that.
"""

from __future__ import annotations

from .locate import KeyPath, Locator


def cut_section(text: str, table: KeyPath) -> str | None:
    """`text` without the `[table]` section, with the comment lines right above its header (they
    describe it) but not those right above the next header (they describe that one)."""
    span = Locator(text).section(table)
    if span is None:
        return None
    lines = text.split("\n")
    header, end = span[0] - 1, span[1] - 1
    first = header
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    if end >= len(lines):
        return "\n".join(lines[:first] + _closing_comments(lines, header)).rstrip("\r\n") + "\n"
    while end - 1 > header and lines[end - 1].lstrip().startswith("#"):
        end -= 1
    return "\n".join(lines[:first] + lines[end:])


def _closing_comments(lines: list[str], header: int) -> list[str]:
    """The comment block that ends the file after a blank line: it belongs to the file, not the table."""
    end = len(lines)
    while end - 1 > header and not lines[end - 1].strip():
        end -= 1
    start = end
    while start - 1 > header and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return ["", *lines[start:end]] if start < end and not lines[start - 1].strip() else []
