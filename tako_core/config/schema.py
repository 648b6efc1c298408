"""Checks shared by tako.toml and servers.toml: each returns the clean value or raises `Invalid`.

`Invalid` names the path of the bad key or value; the file loaders turn it into a `ConfigError` with
file:line:column, and the CLI turns it into a plain `BadInput` when the value came from a flag.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from datetime import date, datetime, time
from typing import Any

from .locate import KeyPath

_LABEL = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(h|m|s)")
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 24 * 3600.0  # the agent refuses less than 0.1 s


class Invalid(Exception):
    """A value at `path` is wrong. `at_value`: point at the value rather than at its key."""

    def __init__(self, path: KeyPath, message: str, hint: str, *, at_value: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.hint = hint
        self.at_value = at_value


def where(path: KeyPath) -> str:
    """How a person reads the table holding `path`: `[envs.production]`, or `the top level`."""
    tables = [str(part) for part in path[:-1] if isinstance(part, str)]
    return f"[{'.'.join(tables)}]" if tables else "the top level"


def type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    return type(value).__name__


def suggest(word: str, choices: Collection[str]) -> str:
    """`; did you mean 'x'?` when one of `choices` is close to `word`, else nothing."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    # Swapped letters ("prot") are the likeliest typo; abbreviations ("prod") score low but are common.
    close.sort(key=lambda choice: sorted(choice) != sorted(word))
    close = close or [choice for choice in choices if word and choice.startswith(word)]
    return f"; did you mean '{close[0]}'?" if close else ""


def check_keys(table: Mapping[str, Any], allowed: Collection[str], path: KeyPath) -> None:
    for key in table:
        if key not in allowed:
            raise Invalid(
                (*path, key),
                f"unknown key '{key}' in {where((*path, key))}{suggest(key, allowed)}",
                f"allowed keys here: {', '.join(allowed)}",
            )


def expect_table(value: object, path: KeyPath, hint: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(path, f"'{_name(path)}' must be a table, not {type_name(value)}", hint, at_value=True)
    return value


def expect_str(value: object, path: KeyPath, hint: str) -> str:
    if not isinstance(value, str):
        raise Invalid(path, f"'{_name(path)}' must be a string, not {type_name(value)}", hint, at_value=True)
    if "\x00" in value:
        raise Invalid(path, f"'{_name(path)}' contains a NUL character", "remove the \\u0000", at_value=True)
    return value


def optional_str(table: Mapping[str, Any], key: str, path: KeyPath, hint: str) -> str | None:
    return expect_str(table[key], (*path, key), hint) if key in table else None


def expect_int(value: object, path: KeyPath, low: int, high: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(
            path, f"'{_name(path)}' must be an integer, not {type_name(value)}", hint, at_value=True
        )
    if not low <= value <= high:
        raise Invalid(
            path, f"'{_name(path)}' must be between {low} and {high}, not {value}", hint, at_value=True
        )
    return value


def expect_label(value: object, path: KeyPath, what: str) -> str:
    """A DNS label: lowercase letters, digits and '-', starting with a letter, at most 63 characters."""
    hint = f"{what} names use a-z, 0-9 and '-', start with a letter, do not end with '-', at most 63 long"
    text = expect_str(value, path, hint)
    if not _LABEL.fullmatch(text):
        raise Invalid(path, f"invalid {what} name {text!r}", hint, at_value=True)
    return text


def check_label_key(name: str, path: KeyPath, what: str) -> str:
    """A table key that must be a DNS label (an env or server name); points at the key itself."""
    try:
        return expect_label(name, path, what)
    except Invalid as err:
        raise Invalid(path, err.message, err.hint) from None


def check_var_name(name: str, path: KeyPath) -> str:
    if not _VAR_NAME.fullmatch(name):
        raise Invalid(
            path,
            f"invalid variable name {name!r} in {where(path)}",
            "variable names use letters, digits and '_', and do not start with a digit",
        )
    return name


def var_value(value: object, path: KeyPath) -> str:
    """Environment values are strings; booleans and numbers are accepted and written as TOML spells them."""
    hint = 'write the value as a string, e.g. KEY = "value"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(path, f"'{_name(path)}' must be a finite number", hint, at_value=True)
        return repr(value)
    if not isinstance(value, str):
        raise Invalid(
            path,
            f"'{_name(path)}' must be a string, number or boolean, not {type_name(value)}",
            hint,
            at_value=True,
        )
    return expect_str(value, path, hint)


def duration(value: object, path: KeyPath) -> float:
    """Seconds: a number, or a string like "90s", "10m", "1h30m" (a bare number string is seconds)."""
    hint = 'use seconds (600) or a string like "90s", "10m", "1h30m"'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid(
            path,
            f"'{_name(path)}' must be a number or a duration string, not {type_name(value)}",
            hint,
            at_value=True,
        )
    seconds = _parse_duration(value) if isinstance(value, str) else float(value)
    if seconds is None:
        raise Invalid(path, f"'{_name(path)}' is not a duration: {value!r}", hint, at_value=True)
    if not (math.isfinite(seconds) and MIN_TIMEOUT <= seconds <= MAX_TIMEOUT):
        raise Invalid(
            path,
            f"'{_name(path)}' must be between 0.1s and 24h, not {value!r}",
            hint,
            at_value=True,
        )
    return seconds


def _parse_duration(text: str) -> float | None:
    text = text.strip()
    return float(text) if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text) else _parse_units(text)


def _parse_units(text: str) -> float | None:
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos and text[pos : match.start()].strip():
            return None
        total += float(match.group(1)) * scale[match.group(2)]
        pos = match.end()
    return total if pos and not text[pos:].strip() else None


def _name(path: KeyPath) -> str:
    """The key a person sees: `release`, or `servers[1]` for an array element."""
    names = [part for part in path if isinstance(part, str)]
    name = names[-1] if names else "value"
    return f"{name}[{path[-1]}]" if path and isinstance(path[-1], int) else name
