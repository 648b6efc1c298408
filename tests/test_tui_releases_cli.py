"""`tako releases` without a subcommand: the releases screen on a terminal (tmux), `ls` elsewhere.

Two real deploys (v1, v2) to real SSH servers keep two releases; the screen then rolls back to v1.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from pathlib import Path

from tests.deploykit import app_dir, get, sample_app, tako
from tests.fleet import Fleet, FleetServer
from tests.tmux import Tmux


def two_releases(fleet: Fleet, tmp_path: Path) -> tuple[list[FleetServer], Path, str, str]:
    """Deploy v1 then v2; returns the servers, tako.toml and both build ids."""
    servers = fleet(2)
    builds = []
    for version in ("v1", "v2"):
        cfg = sample_app(tmp_path, servers, version=version)
        run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
        assert run.code == 0, run.stderr
        builds.append(next(str(e["build"]) for e in run.events() if e["event"] == "ArtifactBuilt"))
    v1, v2 = builds
    assert v1 != v2
    return servers, cfg, v1, v2


def test_without_a_terminal_tako_releases_lists_them(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers, cfg, v1, v2 = two_releases(fleet, tmp_path)

    listed = tako("releases", cwd=cfg.parent)  # stdin and stderr are no terminal
    assert listed.code == 0, listed.stderr
    lines = listed.stdout.splitlines()
    expected = []
    for s in servers:
        expected += [f"{s.name}:", rf"  \* {v2}  \d+s ago", rf"    {v1}  \d+s ago"]
    assert len(lines) == len(expected), listed.stdout
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)

    # Options given before a subcommand reach it: `-c` from elsewhere, `-e` by name.
    handed = tako("releases", "-c", str(cfg), "-e", "production", "ls", "--json", cwd=tmp_path)
    assert handed.code == 0, handed.stderr
    kept = json.loads(handed.stdout)
    assert {r["build"] for r in kept[servers[0].name]} == {v1, v2}
    wrong = tako("releases", "-e", "nope", "ls", cwd=cfg.parent)
    assert wrong.code == 2, wrong.stderr
    assert "nope" in wrong.stderr


def test_on_a_terminal_the_screen_rolls_back_after_confirmation(
    fleet: Fleet, tako_home: Path, tmp_path: Path, tmux: Tmux
) -> None:
    servers, cfg, v1, v2 = two_releases(fleet, tmp_path)
    status = tmp_path / "exit-status"
    releases = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "tako_tui.cli", "releases"))
    command = (
        f"cd {shlex.quote(str(cfg.parent))} && {releases}; echo $? > {shlex.quote(str(status))}; sleep 60"
    )
    tmux.run("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", command)

    screen = tmux.wait_for("both releases", lambda s: "Releases kept" in s and v1 in s and v2 in s)
    assert screen.count("current") >= len(servers)
    tmux.run("send-keys", "-t", "t", "Down")
    time.sleep(0.2)  # the cursor moves before `r` reads it
    tmux.run("send-keys", "-t", "t", "r")
    tmux.wait_for("the confirmation", lambda s: f"back to {v1}" in s)
    assert all(get(s).startswith("v2 ") for s in servers)  # nothing changes before the answer
    tmux.run("send-keys", "-t", "t", "y")

    tmux.wait_for("the rollback to finish", lambda s: "✓ deployed" in s, within=90)
    tmux.run("send-keys", "-t", "t", "q")
    deadline = time.monotonic() + 15
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status.read_text().strip() == "0"
    for s in servers:
        assert get(s) == f"v1 {v1}"
        assert (app_dir(s) / "current").resolve().name == v1
