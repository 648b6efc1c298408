"""The wire protocol between the client and the agent: versioned newline-delimited JSON.

Each request is one line `{"v": 1, "id": N, "op": "...", ...params}`. Each reply line carries the
request's id: zero or more events `{"id": N, "event": "...", ...}`, then exactly one final line,
`{"id": N, "ok": true, ...result}` or `{"id": N, "ok": false, "error": {"code", "message", "hint"}}`.
Shared by the client and the agent, so stdlib only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # bytes per line, newline included; longer lines are refused, never buffered
# Output lines inside events are cut to this many characters so an event always fits in MAX_LINE.
MAX_OUTPUT_LINE = 16 * 1024

# Error codes (the closed set the agent answers with).
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_OP = "unknown_op"
NOT_FOUND = "not_found"
LEASE_HELD = "lease_held"
LEASE_NOT_HELD = "lease_not_held"
BUSY = "busy"
FAILED = "failed"
INTERNAL = "internal"

Message = dict[str, Any]


@dataclass(frozen=True)
class RunResult:
    """How a release run ended: its exit code (None when lost), and whether tako ended it."""

    exit_code: int | None
    timed_out: bool
    stopped: bool


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; `code` is one of the error codes above."""

    def __init__(self, code: str, message: str, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details

    def to_error(self) -> Message:
        error: Message = {"code": self.code, "message": self.message, "hint": self.hint}
        if self.details:
            error["details"] = self.details
        return error


def encode(message: Message) -> bytes:
    """One message as one line (compact JSON, ASCII-safe, newline-terminated)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def decode(line: bytes) -> Message:
    """One line as a JSON object; ProtocolError(BAD_REQUEST/TOO_LARGE) on anything else."""
    if len(line) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"line of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(BAD_REQUEST, f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError(BAD_REQUEST, "a message must be a JSON object")
    return value


def request(request_id: int, op: str, params: Message) -> Message:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, **params}


def ok(request_id: Any, result: Message) -> Message:
    return {"id": request_id, "ok": True, **result}


def failure(request_id: Any, error: ProtocolError) -> Message:
    return {"id": request_id, "ok": False, "error": error.to_error()}


def event(request_id: Any, name: str, fields: Message) -> Message:
    return {"id": request_id, "event": name, **fields}


def clip(line: str) -> str:
    return line if len(line) <= MAX_OUTPUT_LINE else line[:MAX_OUTPUT_LINE] + "…"
