"""Reading and writing TOML files: every failure becomes a `ConfigError` with file:line:column."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import tomlkit
from tomlkit.exceptions import ParseError, TOMLKitError
from tomlkit.toml_document import TOMLDocument

from tako_core.errors import ConfigError

from .locate import Locator
from .schema import Invalid

_TOMLKIT_WHERE = re.compile(r"\s*at line \d+ col \d+\s*$")


def read_text(path: Path, *, missing_hint: str) -> str:
    """The file's text; a missing, unreadable or non-UTF-8 file is a `ConfigError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", path=path, hint=missing_hint) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", path=path, hint=missing_hint) from None
    except OSError as err:
        raise ConfigError(
            f"cannot read: {err.strerror}", path=path, hint="check the file's permissions"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = len(data[data.rfind(b"\n", 0, err.start) + 1 : err.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            "not valid UTF-8", path=path, line=line, column=column, hint="save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def parse(text: str, path: Path) -> TOMLDocument:
    """tomlkit's document of `text`; a TOML syntax error points at its line and column."""
    try:
        return tomlkit.parse(text)
    except ParseError as err:
        message = _TOMLKIT_WHERE.sub("", str(err)) or "invalid TOML"
        line, column = max(err.line, 1), err.col + 1  # tomlkit counts columns from 0
        if "'\\x00'" in message and "\x00" not in text:  # tomlkit's name for the end of the text
            message = "unexpected end of file"
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        elif "character: '\\n'" in message:
            message = "unexpected end of line"
        elif "already exists" in message or "redefinition" in message:
            # tomlkit points past the definition; the locator finds the second one itself.
            line, column = Locator(text).duplicate or (line, column)
        raise ConfigError(
            f"TOML syntax error: {message[0].lower()}{message[1:]}",
            path=path,
            line=line,
            column=column,
            hint="fix the TOML syntax at this place (https://toml.io)",
        ) from None
    except TOMLKitError as err:
        raise ConfigError(
            f"TOML error: {err}", path=path, hint="fix the TOML syntax (https://toml.io)"
        ) from None


def located(err: Invalid, path: Path, source: str) -> ConfigError:
    """The `ConfigError` for a schema failure, pointing at the key or value in `source`."""
    locator = Locator(source)
    line, column = locator.value(err.path) if err.at_value else locator.key(err.path)
    return ConfigError(err.message, path=path, line=line, column=column, hint=err.hint)


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace `path` with `text` so readers see the old or the new file, never half of one."""
    try:
        _write_atomic(path, text, mode)
    except OSError as err:
        raise ConfigError(
            f"cannot write: {err.strerror or err}", path=path, hint="check the folder exists and is writable"
        ) from None


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777  # keep the permissions the user chose
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
