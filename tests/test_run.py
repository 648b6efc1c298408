"""`tako run` end to end over real sshd: the instances' release and environment, exit codes, masking,
the deploy lease, and a PTY driven in a real terminal (tmux)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tako_core.agent.contract import MAX_OUTPUT_LINE
from tako_core.secrets import SecretsStore, new_exported_key
from tako_core.transport import Connection
from tests.deploykit import TAKO, app_dir, sample_app, tako
from tests.fleet import Fleet, FleetServer
from tests.tmux import Tmux

SECRET = "hunter2-very-secret"


def deployed(tmp_path: Path, servers: list[FleetServer], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """The sample app with a var and a secret, deployed to `servers`: (tako.toml, build)."""
    monkeypatch.setenv("TAKO_SECRETS_KEY_PRODUCTION", new_exported_key())
    cfg = sample_app(tmp_path, servers, extra='[vars]\nSAMPLE_SAY = "hello"\n')
    store = SecretsStore.open(cfg.parent, "web")
    store.set("production", "SAMPLE_SECRET", SECRET)
    store.save()
    run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    return cfg, next(e["build"] for e in run.events() if e["event"] == "ArtifactBuilt")


def test_run_once_as_an_instance_would(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(2)
    cfg, build = deployed(tmp_path, servers, monkeypatch)
    monkeypatch.delenv("TAKO_SECRETS_KEY_PRODUCTION")  # running needs no key: the agent has the env

    shell = 'echo "$SAMPLE_SAY $TAKO_BUILD $ENV"; echo "$SAMPLE_SECRET"; pwd; test -z "$PORT" && echo no port'
    shell += "; exit 7"
    ran = tako("run", "--", shell, cwd=cfg.parent)
    assert ran.code == 7, ran.stderr
    release = app_dir(servers[0]) / "releases" / build
    assert ran.stdout.splitlines() == [f"hello {build} production", "***", str(release), "no port"]
    assert SECRET not in ran.stdout + ran.stderr

    argv = tako(
        "run",
        "--server",
        "s2",
        "--",
        "python3",
        "-c",
        "import os, sys; print(os.getcwd()); sys.exit(3)",
        cwd=cfg.parent,
    )
    assert argv.code == 3, argv.stderr
    assert argv.stdout == f"{app_dir(servers[1]) / 'releases' / build}\n"

    # A secret straddling the cut of an overlong line is masked all the same.
    cut = f"import os; print('x' * {MAX_OUTPUT_LINE - 5} + os.environ['SAMPLE_SECRET'] + ' end')"
    long = tako("run", "--", "python3", "-c", cut, cwd=cfg.parent)
    assert long.code == 0, long.stderr
    assert long.stdout.replace("\n", "") == "x" * (MAX_OUTPUT_LINE - 5) + "*** end"

    killed = tako("run", "--", "kill -TERM $$", cwd=cfg.parent)
    assert killed.code == 128 + 15

    unknown = tako("run", "--server", "nope", "--", "true", cwd=cfg.parent)
    assert unknown.code == 2
    assert "Traceback" not in unknown.stderr


async def test_run_waits_for_no_deploy_unless_forced(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(1)
    cfg, _ = deployed(tmp_path, servers, monkeypatch)
    async with Connection.open(servers[0].server) as conn:
        agent = await conn.agent()
        await agent.lease_acquire("web", "production", "ci@runner", "b2", ttl=120)
        try:
            refused = tako("run", "--", "echo ran", cwd=cfg.parent)
            assert refused.code == 1
            assert "being deployed by ci@runner" in refused.stderr
            assert "--force" in refused.stderr
            assert refused.stdout == ""
            forced = tako("run", "--force", "--", "echo ran", cwd=cfg.parent)
            assert (forced.code, forced.stdout) == (0, "ran\n")
        finally:
            await agent.lease_release("web", "production", "ci@runner")
            await agent.close()


def test_run_in_a_terminal_gets_a_pty(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmux: Tmux
) -> None:
    """A Python REPL on the server: the window's size (and its change), line editing, Ctrl-C to the
    remote process, secrets masked, its exit code tako's."""
    servers = fleet(1)
    cfg, _ = deployed(tmp_path, servers, monkeypatch)
    status = tmp_path / "exit-status"
    run = shlex.join([*TAKO, "run", "--", "python3", "-q"])
    command = f"cd {shlex.quote(str(cfg.parent))} && {run}; echo $? > {shlex.quote(str(status))}; sleep 60"
    tmux.run("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)

    def typed(keys: str, *special: str) -> None:
        tmux.run("send-keys", "-t", "t", "-l", keys)
        for key in special:
            tmux.run("send-keys", "-t", "t", key)

    tmux.wait_for("the prompt", lambda s: s.rstrip().endswith(">>>"))
    typed("import os; os.get_terminal_size()", "Enter")
    tmux.wait_for("the window's size", lambda s: "columns=100, lines=30" in s)
    tmux.run("resize-window", "-t", "t", "-x", "90", "-y", "25")
    typed("os.get_terminal_size()", "Enter")
    tmux.wait_for("the new size", lambda s: "columns=90, lines=25" in s)

    typed("rint(6 * 7)", "C-a")  # line editing: to the start of the line, then the missing letter
    typed("p", "Enter")
    tmux.wait_for("the edited line's result", lambda s: "\n42\n" in s)

    typed("import time; time.sleep(60)", "Enter")
    time.sleep(0.5)
    tmux.run("send-keys", "-t", "t", "C-c")
    tmux.wait_for("the interrupt", lambda s: "KeyboardInterrupt" in s)

    typed("os.environ['SAMPLE_SECRET']", "Enter")
    tmux.wait_for("the masked secret", lambda s: "'***'" in s)
    # Written in two pieces a while apart, so they reach the agent in separate reads of the PTY.
    typed("s = os.environ['SAMPLE_SECRET']; print(s[:8], end='', flush=True); time.sleep(0.5); print(s[8:])")
    typed("", "Enter")
    tmux.wait_for("the secret masked across reads", lambda s: "\n***\n" in s)
    assert SECRET not in tmux.screen()
    assert SECRET[:8] not in tmux.screen()

    typed("exit(5)", "Enter")
    deadline = time.monotonic() + 20
    while not (status.exists() and status.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status.read_text().strip() == "5", tmux.screen()


def test_ctrl_c_ends_the_remote_command_too(
    fleet: Fleet, tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fleet(1)
    cfg, build = deployed(tmp_path, servers, monkeypatch)
    script = "echo started; sleep 30"
    run = subprocess.Popen(
        [*TAKO, "run", "--", script],
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert run.stdout is not None
    assert run.stdout.readline() == "started\n"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=20)
    assert run.returncode == 130
    assert "Traceback" not in err
    release = str(app_dir(servers[0]) / "releases" / build)

    def sleeping() -> bool:  # the remote command's sleep, in the release directory
        return any(_cwd(pid) == release and _comm(pid) == "sleep" for pid in _pids())

    deadline = time.monotonic() + 10
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sleeping()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
