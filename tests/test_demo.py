"""`tako demo` as a person or CI runs it: a real subprocess without a terminal, real servers on loopback.

Each test checks what the demo prints, what its servers answered, and that nothing it started is left:
no process whose command line mentions its workspace or that runs inside it, no workspace directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tako_core.demo.workspace import SECRET_VALUE

TAKO = [sys.executable, "-m", "tako_tui.cli"]
WORKSPACE = re.compile(r"^Workspace: (\S+)$", re.MULTILINE)
URL = re.compile(r"^  curl (http://127\.0\.0\.\d+:\d+/)$", re.MULTILINE)
ANSWERED = re.compile(r"^  web-\d +(http://127\.0\.0\.\d+:\d+/) +answered", re.MULTILINE)


def demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TAKO, "demo", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def workspace_of(stderr: str) -> Path:
    found = WORKSPACE.search(stderr)
    assert found, stderr
    return Path(found.group(1))


def leftovers(workspace: Path) -> list[str]:
    """Processes that mention the workspace in their command line or run inside it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(workspace) in cmdline or cwd.startswith(str(workspace)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_nothing_left(workspace: Path, within: float = 0.0) -> None:
    deadline = time.monotonic() + within
    while leftovers(workspace) or workspace.exists():
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert leftovers(workspace) == []
    assert not workspace.exists()


def test_the_demo_deploys_three_servers_that_answer_with_the_migrated_schema() -> None:
    run = demo("--no-tui")
    assert run.returncode == 0, run.stderr
    waiting = re.findall(
        r"^(web-\d) +Release +waiting +Waiting for release command$", run.stderr, re.MULTILINE
    )
    assert sorted(waiting) == ["web-2", "web-3"]
    assert run.stderr.count("Running release command") == 1
    assert "web-1 | connecting to " in run.stderr
    assert "DEMO_DB_PASSWORD=***" in run.stderr
    assert SECRET_VALUE not in run.stderr + run.stdout
    assert "schema version 3: done" in run.stderr
    # Each server answered through its own router, with the one database the leader migrated.
    answered = re.findall(
        r"^  (web-\d) +(http://127\.0\.0\.\d+:\d+/) +answered 200", run.stdout, re.MULTILINE
    )
    assert [name for name, _ in answered] == ["web-1", "web-2", "web-3"]
    assert len({url for _, url in answered}) == 3
    assert "schema version 3, table greetings:" in run.stdout
    assert "ja  Konnichiwa" in run.stdout
    # No invitation to curl servers that are about to be removed; it says how to keep them.
    assert "curl" not in run.stdout
    assert "Cleaning up (run it on a terminal, or with --hold, to keep the servers up)." in run.stderr
    assert "Traceback" not in run.stderr
    assert_nothing_left(workspace_of(run.stderr))


def test_a_failing_migration_shows_the_abort_and_leaves_nothing() -> None:
    run = demo("--no-tui", "--fail-release")
    assert run.returncode == 1, run.stderr
    assert "web-1 | error: migration 3 failed" in run.stderr
    assert "gate closed: the release command on web-1 exited with code 1" in run.stderr
    assert re.search(r"^  web-2 +aborted", run.stderr, re.MULTILINE)
    assert "deploy failed" in run.stderr
    assert "The shared database is unchanged: schema version 0" in run.stdout
    assert "curl" not in run.stdout
    assert "Traceback" not in run.stderr
    assert_nothing_left(workspace_of(run.stderr))


def test_two_demos_at_once_get_their_own_ports_and_both_clean_up() -> None:
    procs = [
        subprocess.Popen(
            [*TAKO, "demo", "--no-tui", "--servers", "2"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=90) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    urls = [url for out, _ in outputs for url in ANSWERED.findall(out)]
    assert len(urls) == 4
    assert len(set(urls)) == 4
    for _, err in outputs:
        assert_nothing_left(workspace_of(err))


def _held_demo() -> tuple[subprocess.Popen[str], Path, list[str]]:
    """`tako demo --hold` with one server, once it serves; returns it, its workspace and its URLs."""
    proc = subprocess.Popen(
        [*TAKO, "demo", "--no-tui", "--hold", "--servers", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "Serving until Ctrl-C" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "Serving until Ctrl-C" in seen, seen
    return proc, workspace_of(seen), URL.findall(seen)


def test_ctrl_c_ends_a_holding_demo_and_cleans_up() -> None:
    proc, workspace, urls = _held_demo()
    with urllib.request.urlopen(urls[0], timeout=5) as response:
        assert "schema version 3" in response.read().decode()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Stopping the servers" in out
    assert_nothing_left(workspace)


def test_a_killed_demo_is_cleaned_up_by_its_reaper() -> None:
    proc, workspace, _ = _held_demo()
    assert leftovers(workspace)  # its agent and instance run
    proc.kill()
    proc.communicate(timeout=10)
    assert_nothing_left(workspace, within=15)
