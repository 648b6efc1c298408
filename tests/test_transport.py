"""Connection over real SSH: OpenSSH sshd and the in-process host, both through the same tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from tako_core.errors import TransportError
from tako_core.transport import AgentNotRunning, Completed, Connection
from tako_core.transport import connection as connection_module
from tako_core.transport.connection import Opening
from tako_core.transport.inprocess import known_hosts_line
from tests.fleet import Fleet, FleetServer, free_port


def _open(server: FleetServer) -> Opening:
    return Connection.open(server.server, timeout=5)


async def test_run_returns_status_and_both_streams(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    async with _open(s1) as conn:
        result = await conn.run('read x; echo "got $x"; echo oops >&2; exit 4', input=b"hello\n")
        assert result == Completed(exit_status=4, stdout="got hello\n", stderr="oops\n")
        assert (await conn.run("kill -TERM $$")).exit_status == 143
        # A command that reads stdin is not left waiting when there is no input.
        assert (await conn.run("cat", timeout=5)).stdout == ""


async def test_run_streams_lines_as_they_come(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    seen: list[tuple[str, str, float]] = []
    async with _open(s1) as conn:
        started = time.monotonic()
        result = await conn.run(
            "echo first; echo warn >&2; sleep 0.5; echo second",
            on_stdout=lambda line: seen.append(("out", line, time.monotonic() - started)),
            on_stderr=lambda line: seen.append(("err", line, time.monotonic() - started)),
        )
        ended = time.monotonic() - started
    assert result.stdout == "first\nsecond\n"
    assert sorted((kind, line) for kind, line, _ in seen) == [
        ("err", "warn"),
        ("out", "first"),
        ("out", "second"),
    ]
    first_at = next(at for kind, line, at in seen if line == "first")
    assert ended - first_at > 0.3, "the first line arrived only when the command ended"


async def test_a_killed_session_is_an_error_not_a_silent_none(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    async with _open(s1) as conn:
        started = asyncio.Event()
        running = asyncio.create_task(conn.run("echo started; sleep 30", on_stdout=lambda _: started.set()))
        await asyncio.wait_for(started.wait(), 10)
        assert s1.drop_connections() > 0
        with pytest.raises(TransportError, match="was lost while running"):
            await asyncio.wait_for(running, 10)
        # The next use reconnects by itself: the connection died between two commands.
        assert (await conn.run("echo back")).stdout == "back\n"


async def test_reconnect_replaces_the_connection(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    async with _open(s1) as conn:
        await conn.reconnect()
        assert (await conn.run("echo ok")).stdout == "ok\n"


async def test_reconnect_gives_up_after_bounded_attempts(
    any_fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    (s1,) = any_fleet(1, register=False)
    monkeypatch.setattr(connection_module, "RECONNECT_DELAYS", (0.0, 0.05, 0.05))
    async with _open(s1) as conn:
        s1.stop()
        started = time.monotonic()
        with pytest.raises(TransportError, match="gave up after 3 attempts"):
            await conn.reconnect()
        assert time.monotonic() - started < 5
        s1.start()
        await conn.reconnect()
        assert (await conn.run("true")).exit_status == 0


async def test_twelve_concurrent_commands_share_one_connection(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    running = peak = 0

    def started(_: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)

    async def one(i: int) -> str:
        nonlocal running
        result = await conn.run(f"echo {i}; sleep 0.2", on_stdout=started)
        running -= 1
        return result.stdout

    async with _open(s1) as conn:
        assert await asyncio.gather(*(one(i) for i in range(12))) == [f"{i}\n" for i in range(12)]
        assert 1 < peak <= connection_module.MAX_CHANNELS
        # Bursts of short commands: OpenSSH frees session slots late, yet none may fail.
        for _ in range(10):
            results = await asyncio.gather(*(conn.run("true") for _ in range(12)))
            assert {r.exit_status for r in results} == {0}


async def test_timeout_is_a_transport_error(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    async with _open(s1) as conn:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"did not finish within 0\.3 s"):
            await conn.run("sleep 10", timeout=0.3)
        assert time.monotonic() - started < 3
        assert (await conn.run("echo still usable")).exit_status == 0


async def test_a_wrong_host_key_is_refused(any_fleet: Fleet, tmp_path: Path) -> None:
    s1, s2 = any_fleet(2, register=False)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(known_hosts_line(s1.address, s1.port, s2.host.host_key))
    with pytest.raises(TransportError, match="does not match known_hosts") as caught:
        await Connection.open(dataclasses.replace(s1.server, known_hosts=wrong), timeout=5)
    assert caught.value.hint is not None
    assert "ssh-keygen -R" in caught.value.hint
    wrong.write_text("")
    with pytest.raises(TransportError, match="is not in known_hosts"):
        await Connection.open(dataclasses.replace(s1.server, known_hosts=wrong), timeout=5)


async def test_without_a_known_hosts_the_users_own_is_used(
    any_fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (s1,) = any_fleet(1, register=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    server = dataclasses.replace(s1.server, known_hosts=None)
    with pytest.raises(TransportError, match=r"known_hosts.*does not exist") as caught:
        await Connection.open(server, timeout=5)
    keyscan = f"`ssh-keyscan -p {s1.port} {s1.address} >> {tmp_path}/.ssh/known_hosts`"
    assert keyscan in (caught.value.hint or "")  # the same fix as for an unknown host
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text(s1.known_hosts.read_text())
    async with Connection.open(server, timeout=5) as conn:
        assert (await conn.run("true")).exit_status == 0


async def test_open_is_awaited_or_entered_and_closes_on_the_way_out(any_fleet: Fleet) -> None:
    """As asyncssh's `connect`: `await Connection.open(...)`, or `async with` it (no `await` inside)."""
    (s1,) = any_fleet(1, register=False)
    async with Connection.open(s1.server, timeout=5) as conn:
        assert (await conn.run("echo in")).stdout == "in\n"
        assert s1.host.connections()
    async with asyncio.timeout(10):  # an sshd serving a connection exits just after it closes
        while s1.host.connections():  # noqa: ASYNC110 (processes, not events)
            await asyncio.sleep(0.05)
    conn = await Connection.open(s1.server, timeout=5)
    try:
        assert (await conn.run("echo awaited")).stdout == "awaited\n"
    finally:
        await conn.close()


async def test_login_failures_are_explained(any_fleet: Fleet, tmp_path: Path) -> None:
    (s1,) = any_fleet(1, register=False)
    stranger = tmp_path / "id_other"
    import asyncssh

    asyncssh.generate_private_key("ssh-ed25519").write_private_key(stranger)
    with pytest.raises(TransportError, match="refused the login"):
        await Connection.open(dataclasses.replace(s1.server, identity=stranger), timeout=5)
    closed_port = free_port(s1.address)
    with pytest.raises(TransportError, match="connection refused"):
        await Connection.open(dataclasses.replace(s1.server, port=closed_port), timeout=5)
    with pytest.raises(TransportError, match="does not exist"):
        await Connection.open(dataclasses.replace(s1.server, identity=tmp_path / "missing"), timeout=5)


async def test_agent_channel_without_an_agent_says_how_to_start_one(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1, register=False)
    async with _open(s1) as conn:
        with pytest.raises(AgentNotRunning, match="no tako agent answers") as caught:
            await conn.agent()
        assert caught.value.hint is not None
        assert "tako servers setup s1" in caught.value.hint


@contextlib.asynccontextmanager
async def _ssh_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """A user's ssh-agent (OpenSSH's), with SSH_AUTH_SOCK pointing at it."""
    sock = tmp_path / "agent.sock"
    agent = await asyncio.create_subprocess_exec(
        "ssh-agent", "-D", "-a", str(sock), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield
    finally:
        agent.terminate()
        await agent.wait()


async def test_ssh_config_cannot_forward_the_users_agent_and_only_the_identity_is_offered(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ForwardAgent yes` in ~/.ssh/config must not hand the user's SSH agent to every server, and
    with an identity configured the agent's keys are not offered."""
    (s1,) = fleet(1, register=False)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n  ForwardAgent yes\n")
    monkeypatch.setenv("HOME", str(home))
    async with _ssh_agent(tmp_path, monkeypatch):
        async with _open(s1) as conn:
            result = await conn.run('echo "sock=${SSH_AUTH_SOCK:-none}"')
        assert result.stdout == "sock=none\n"

        # The agent holds the key the server accepts; the configured identity is a stranger's.
        adding = await asyncio.create_subprocess_exec(
            "ssh-add", "-q", str(s1.server.identity), stderr=asyncio.subprocess.DEVNULL
        )
        assert await adding.wait() == 0
        stranger = tmp_path / "id_other"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(stranger)
        with pytest.raises(TransportError, match="refused the login"):
            await Connection.open(dataclasses.replace(s1.server, identity=stranger), timeout=5)


def _logins(log: Path, since: int) -> list[str]:
    """The sshd log's lines about login requests written after byte `since` (LogLevel VERBOSE)."""
    lines = log.read_bytes()[since:].decode(errors="replace").splitlines()
    return [line for line in lines if re.match(r"(Accepted|Failed|Postponed) [\w-]+ for ", line)]


async def test_a_login_is_one_signed_request_and_a_refused_key_falls_through_to_the_next(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `none` probe, no public-key query (sshauth): sshd sees one request, the signed one. A key
    the server refuses that way is followed by the next key, as after a refused query."""
    (s1,) = fleet(1, register=False)
    log = s1.host.log  # type: ignore[attr-defined]
    since = log.stat().st_size
    async with _open(s1) as conn:
        assert (await conn.run("true")).exit_status == 0
    (accepted,) = _logins(log, since)
    assert "Accepted publickey for" in accepted

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes(s1.identity.read_bytes())
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    async with _ssh_agent(tmp_path, monkeypatch):
        stranger = tmp_path / "id_other"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(stranger)
        stranger.chmod(0o600)
        adding = await asyncio.create_subprocess_exec("ssh-add", "-q", str(stranger))
        assert await adding.wait() == 0
        since = log.stat().st_size
        # No identity: the agent's key (a stranger's) is offered first, then ~/.ssh/id_ed25519.
        async with Connection.open(dataclasses.replace(s1.server, identity=None), timeout=5) as conn:
            assert (await conn.run("true")).exit_status == 0
        refused, accepted = _logins(log, since)
        assert "Failed publickey for" in refused
        assert "Accepted publickey for" in accepted


_PROBES = """
import ctypes.util, sys
asked = []
find = ctypes.util.find_library
ctypes.util.find_library = lambda name: asked.append(name) or find(name)
from tako_core.transport.sshlib import asyncssh
asyncssh.connect  # the first use imports it
print(" ".join(asked))
"""


@pytest.mark.skipif(
    not Path("/etc/ld.so.cache").is_file() or b"liboqs" in Path("/etc/ld.so.cache").read_bytes(),
    reason="needs a Linux linker cache without liboqs",
)
def test_asyncssh_is_imported_without_the_liboqs_probe_unless_a_search_path_is_set() -> None:
    def asked(**env: str) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LIBRARY_PATH")}
        command = [sys.executable, "-c", _PROBES]
        result = subprocess.run(command, env={**environ, **env}, capture_output=True, text=True, check=True)
        return result.stdout.split()

    assert "oqs" not in asked()
    assert "nettle" in asked()  # other libraries are looked up as before
    assert {"oqs", "liboqs"} <= set(asked(LD_LIBRARY_PATH="/nonexistent"))
