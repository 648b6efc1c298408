"""Finding and ending every process that runs under the demo's directory (agents, instances, releases).

The agents detach (double fork, own session), so they are nobody's children: the demo finds them, and
the instances they started, by their command line or working directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def processes_under(directory: Path) -> list[int]:
    """Pids (not ours) whose command line mentions `directory` or whose cwd lies under it."""
    marker = str(directory)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone, or not ours to look at
        if marker in cmdline or cwd == marker or cwd.startswith(marker + "/"):
            found.append(int(entry.name))
    return found


def end_processes_under(directory: Path, *, term_wait: float = 5.0, kill_wait: float = 2.0) -> list[int]:
    """SIGTERM, then SIGKILL, everything under `directory`; returns the pids that survived both."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        pids = processes_under(directory)
        if not pids:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and processes_under(directory):
            time.sleep(0.05)
    return processes_under(directory)


def stop_agents(roots: list[Path], timeout: float = 10.0) -> None:
    """Ask the agent of each root to stop (each stops its instances first); wait, bounded, for all."""
    pids = []
    for root in roots:
        try:
            pid = int((root / "run" / "agent.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue  # no agent there, or already gone
        pids.append(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.05)
