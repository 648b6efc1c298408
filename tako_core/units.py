"""Numbers as a person reads them; every front end and every event detail uses these."""

from __future__ import annotations

_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def _unit(num: int) -> tuple[str, float]:
    for unit, scale in _UNITS:
        if num >= scale:
            return unit, scale
    return "B", 1.0


def size(num: int) -> str:
    """Bytes in the unit a person reads at a glance: 512 B, 4.2 MB."""
    unit, scale = _unit(num)
    return f"{num} B" if unit == "B" else f"{num / scale:.1f} {unit}"


def progress(sent: int, total: int) -> str:
    """Upload progress in the total's unit: "2.1/5.0 MB"."""
    unit, scale = _unit(total)
    if unit == "B":
        return f"{sent}/{total} B"
    return f"{sent / scale:.1f}/{total / scale:.1f} {unit}"
