"""Driving a program in a real terminal: a private tmux server per test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


class Tmux:
    """One private tmux server (its own socket), so nothing leaks into or out of the user's tmux."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10
        )
        return result.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait_for(self, what: str, condition: Callable[[str], bool], within: float = 60) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"never saw {what}; the screen was:\n{self.screen()}")
