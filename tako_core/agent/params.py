"""Typed access to a request's parameters; anything missing or mistyped is a BAD_REQUEST."""

from __future__ import annotations

import builtins
from typing import Any

from tako_core.agent.contract import BAD_REQUEST, ProtocolError
from tako_core.agent.layout import check_name


class Params:
    def __init__(self, message: dict[builtins.str, Any]) -> None:
        self._m = message

    def _bad(self, key: builtins.str, expected: builtins.str) -> ProtocolError:
        return ProtocolError(BAD_REQUEST, f"parameter {key!r} must be {expected}")

    def name(self, key: builtins.str) -> builtins.str:
        return check_name(key, self._m.get(key))

    def str(self, key: builtins.str) -> builtins.str:
        value = self._m.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_str(self, key: builtins.str) -> builtins.str | None:
        return None if self._m.get(key) is None else self.str(key)

    def num(self, key: builtins.str, default: float, low: float, high: float) -> float:
        value = self._m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise self._bad(key, f"a number from {low:g} to {high:g}")
        return float(value)

    def int(self, key: builtins.str, default: int, low: int, high: int) -> int:
        value = self._m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(key, f"an integer from {low} to {high}")
        return value

    def bool(self, key: builtins.str, default: bool = False) -> bool:
        value = self._m.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def mapping(self, key: builtins.str) -> dict[builtins.str, builtins.str]:
        value = self._m.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in value.items()
        ):
            raise self._bad(key, "an object of environment variable names to strings")
        return dict(value)

    def opt_mapping(self, key: builtins.str) -> dict[builtins.str, Any] | None:
        """A JSON object (its values checked by whoever reads them), or None."""
        value = self._m.get(key)
        if value is not None and not isinstance(value, dict):
            raise self._bad(key, "an object")
        return value

    def raw(self) -> bytes:
        """The bytes that followed the request's line (agent/server.py reads them)."""
        value = self._m.get("raw")
        if not isinstance(value, bytes):
            raise self._bad("raw", "the length of the bytes that follow the line")
        return value

    def strings(self, key: builtins.str) -> list[builtins.str]:
        value = self._m.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings")
        return list(value)

    def hosts(self, key: builtins.str) -> list[builtins.str]:
        """Route host names (`example.com`, `*.example.com`), checked before anything starts."""
        hosts = self.strings(key)
        for host in hosts:
            name = host.removeprefix("*.")
            try:
                valid = 0 < len(name) <= 253 and all(c.isalnum() or c in ".-" for c in name)
                valid = valid and bool(name.encode("idna"))
            except UnicodeError:
                valid = False
            if not valid:
                raise ProtocolError(
                    BAD_REQUEST,
                    f"route {host[:80]!r} is not a host name",
                    hint="use e.g. example.com or *.example.com",
                )
        return hosts

    def command(self, key: builtins.str) -> builtins.str:
        value = self.str(key)
        if not value.strip() or "\0" in value:
            raise self._bad(key, "a non-empty command")
        return value
