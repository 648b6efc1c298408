"""Numbers as a person reads them (sizes, durations, ages): every front end and event detail uses these."""

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


def duration(seconds: float) -> str:
    """A span of time, short and stable-width enough for a panel column: 0.4s, 12s, 3m05s, 1h02m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def ago(stamp: float, now: float) -> str:
    """How long before `now` the wall-clock time `stamp` was, in its largest unit: 42s ago, 3h ago."""
    seconds = max(now - stamp, 0.0)
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


_SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_span(text: str) -> float | None:
    """ "90", "90s", "10m", "2h", "1d" as seconds; None when it is none of these."""
    text = text.strip()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _SPANS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        return None
    return value * _SPANS[unit] if value >= 0 else None
