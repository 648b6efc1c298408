"""The console in a real terminal (tmux): `tako deploy` against 3 real SSH servers, `tako secrets edit`.

The sample app's release command prints a line every half second, so the screen can be read while
the leader runs it: three panels, one leader, two followers waiting, the output arriving line by line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.deploykit import sample_app
from tests.fleet import Fleet
from tests.tmux import Tmux

LINES = 8
SLOW_RELEASE = f'\n[vars]\nSAMPLE_RELEASE_LINES = "{LINES}"\nSAMPLE_RELEASE_PAUSE = "0.5"\n'


def test_tako_deploy_shows_the_leader_running_and_the_followers_waiting(
    fleet: Fleet, tako_home: Path, tmp_path: Path, tmux: Tmux
) -> None:
    servers = fleet(3)
    cfg = sample_app(tmp_path, servers, release="python3 migrate.py", extra=SLOW_RELEASE)
    status = tmp_path / "exit-status"
    deploy = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "tako_tui.cli", "deploy", "--yes"))
    command = f"cd {shlex.quote(str(cfg.parent))} && {deploy}; echo $? > {shlex.quote(str(status))}; sleep 60"
    tmux.run("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", command)

    def releasing(screen: str) -> bool:
        running, waiting = (
            screen.count("Running release command"),
            screen.count("Waiting for release command"),
        )
        return (running, waiting) == (1, 2)

    screen = tmux.wait_for("the leader running the release", releasing)
    leader = servers[0]
    assert screen.count("★ leader") == 1
    assert screen.count("follower") == 2
    for server in servers:
        assert server.name in screen
    # The leader's panel is the one marked leader: its title line names both.
    assert any(leader.name in line and "★ leader" in line for line in screen.splitlines())

    # Line by line: a middle step shows up before the last one has been printed.
    first = tmux.wait_for("the release output", lambda s: "migration step 3/" in s)
    assert f"migration step {LINES}/{LINES}" not in first
    tmux.wait_for("the last step", lambda s: f"migration step {LINES}/{LINES}" in s)

    done = tmux.wait_for("the deploy to finish", lambda s: "✓ deployed" in s and "Deployed" in s, within=90)
    assert done.count("✓ deployed") >= 3  # the header and one per server
    tmux.run("send-keys", "-t", "t", "q")
    deadline = time.monotonic() + 15
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status.read_text().strip() == "0"
    # The console is gone; its verdict stays on the terminal: result, build, where the app answers.
    url = f"http://web.test:{leader.http_port}/"
    after = tmux.wait_for("the verdict line", lambda s: url in s)
    assert re.search(rf"^tako: deployed [0-9a-f]{{12}} in \S+ · {re.escape(url)}$", after, re.MULTILINE)


def test_tako_secrets_edit_round_trips_a_value_through_the_keyring(tmp_path: Path, tmux: Tmux) -> None:
    project = tmp_path / "app"
    project.mkdir()
    (project / "tako.toml").write_text(
        'name = "shop"\nstart = "python3 app.py"\n\n[envs.production]\nservers = ["s1"]\n'
    )
    ring = tmp_path / "keyring.json"
    env = {
        "PYTHONPATH": str(Path(__file__).parent),  # the file-backed keyring backend lives in tests/
        "PYTHON_KEYRING_BACKEND": "secrets_file_keyring.FileKeyring",
        "TAKO_TEST_KEYRING_FILE": str(ring),
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    tako = f"{shlex.quote(sys.executable)} -m tako_tui.cli secrets"
    status = tmp_path / "exit-status"
    edit = f"cd {shlex.quote(str(project))} && {exports} {tako} edit"
    command = f"{edit}; echo $? > {shlex.quote(str(status))}; sleep 60"
    tmux.run("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)
    tmux.wait_for("the secrets screen", lambda s: "Environments" in s and "production" in s)

    def keys(*keys: str) -> None:
        for key in keys:
            tmux.run("send-keys", "-t", "t", key)
            time.sleep(0.15)  # a person's pace: each key lands where the previous one moved the focus

    keys("a")
    tmux.wait_for("the form", lambda s: "New secret in production" in s)
    tmux.run("send-keys", "-t", "t", "-l", "API_TOKEN")
    # On a loaded machine the name, Tab and value can reach the app in one read, and the value lands
    # in the name field: let the name show before moving on, as a person would see it.
    tmux.wait_for("the name typed", lambda s: "API_TOKEN" in s)
    keys("Tab")
    time.sleep(0.5)
    tmux.run("send-keys", "-t", "t", "-l", "tok-abc-987")
    keys("Enter")
    tmux.wait_for("the new name", lambda s: "API_TOKEN" in s and "unsaved" in s)
    keys("s")
    tmux.wait_for("the save", lambda s: "unsaved" not in s)
    keys("q")
    deadline = time.monotonic() + 15
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status.read_text().strip() == "0"

    # Another process, the plain CLI, reads the value back with the key from the keyring.
    got = subprocess.run(
        [sys.executable, "-m", "tako_tui.cli", "secrets", "get", "API_TOKEN", "--env", "production"],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert got.stdout.strip() == "tok-abc-987", got.stderr
    assert ring.exists()
    # Nothing decrypted reached the disk.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"tok-abc-987" not in path.read_bytes(), path
