"""JSON lines: one event per line, the schema of `tako_core.events.to_json`."""

from __future__ import annotations

import json

from tako_core.events import Event, to_json


def json_line(event: Event) -> str:
    return json.dumps(to_json(event), separators=(",", ":"), ensure_ascii=False)
