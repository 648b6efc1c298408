"""Looking at processes from tests: is a pid still running?"""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (a zombie has died and only waits for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    # The state follows the command name in parentheses, which may itself contain spaces.
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")
