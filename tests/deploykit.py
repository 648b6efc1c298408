"""Helpers for the end-to-end deploy tests: the sample app, running `tako deploy`, reading the servers."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fleet import FleetServer, write_app

SAMPLE_APP = Path(__file__).parent / "sampleapp"
TAKO = [sys.executable, "-m", "tako_tui.cli"]


def sample_app(directory: Path, servers: list[FleetServer], *, version: str = "v1", **kwargs: str) -> Path:
    """The sample app at `version`, with a tako.toml deploying it to `servers`; returns tako.toml."""
    app = directory / "app"
    if not app.exists():
        shutil.copytree(SAMPLE_APP, app)
        subprocess.run(["git", "init", "-q"], cwd=app, check=True)
    (app / "VERSION").write_text(version + "\n")
    kwargs.setdefault("start", "python3 app.py")
    return write_app(app, servers, **kwargs)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def tako(*args: str, cwd: Path, timeout: float = 120) -> Run:
    """Run the real `tako` command in a subprocess, as a user or CI would."""
    result = subprocess.run(
        [*TAKO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return Run(result.returncode, result.stdout, result.stderr)


def get(server: FleetServer, host: str = "web.test") -> str:
    """GET / through the server's router."""
    conn = http.client.HTTPConnection(server.http_host, server.http_port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        return conn.getresponse().read().decode().strip()
    finally:
        conn.close()


def app_dir(server: FleetServer, app: str = "web", env: str = "production") -> Path:
    return Path(server.root) / "apps" / app / env


def timeline(server: FleetServer) -> list[tuple[float, str]]:
    """What the sample app and its release command recorded in the server's data dir."""
    log = app_dir(server) / "data" / "timeline.log"
    if not log.exists():
        return []
    entries = []
    for line in log.read_text().splitlines():
        stamp, what = line.split(" ", 1)
        entries.append((float(stamp), what))
    return entries
