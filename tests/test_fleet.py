"""The test fleet itself: real SSH servers that both the system ssh client and asyncssh can reach."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh
import pytest

from tako_core.config import load_config, load_inventory, resolve
from tako_core.transport.inprocess import known_hosts_line
from tests import fleet as fleet_module
from tests.fleet import SSHD, Fleet, HostPool, default_kind, write_app


def test_system_ssh_reaches_each_server_with_strict_host_keys(any_fleet: Fleet) -> None:
    servers = any_fleet(3)
    assert [s.address for s in servers] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    for server in servers:
        result = subprocess.run(
            server.ssh_command("echo out; echo err >&2; exit 3"),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_system_ssh_refuses_a_wrong_host_key(any_fleet: Fleet, tmp_path: Path) -> None:
    s1, s2 = any_fleet(2)
    # s2's key claimed for s1's address: exactly what a man in the middle looks like.
    wrong = tmp_path / "known_hosts"
    wrong.write_text(known_hosts_line(s1.address, s1.port, s2.host.host_key))
    result = subprocess.run(
        s1.ssh_command("true", known_hosts=wrong), capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 255
    assert "host key" in result.stderr.lower()


async def test_asyncssh_verifies_host_keys(any_fleet: Fleet, tmp_path: Path) -> None:
    s1, s2 = any_fleet(2)
    async with asyncssh.connect(
        s1.address,
        s1.port,
        username=s1.user,
        client_keys=[str(s1.identity)],
        known_hosts=str(s1.known_hosts),
        config=None,
    ) as conn:
        result = await conn.run('printf %s "$HOME"', check=True)
        assert result.stdout
    wrong = tmp_path / "known_hosts"
    wrong.write_text(known_hosts_line(s1.address, s1.port, s2.host.host_key))
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(
            s1.address, s1.port, username=s1.user, client_keys=[str(s1.identity)], known_hosts=str(wrong)
        )


def test_servers_are_registered_in_tako_home(fleet: Fleet, tako_home: Path) -> None:
    servers = fleet(2)
    inventory = load_inventory(tako_home)
    assert list(inventory.servers) == ["s1", "s2"]
    for server in servers:
        assert inventory.servers[server.name] == server.server
    # Each server has its own root and its own HTTP port on its own address.
    assert len({s.root for s in servers}) == 2
    assert all(s.root.is_dir() and s.http_host == s.address for s in servers)


def test_drop_connections_cuts_a_running_session(any_fleet: Fleet) -> None:
    (s1,) = any_fleet(1)
    session = subprocess.Popen(s1.ssh_command("sleep 30"), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while s1.drop_connections() == 0:
            assert time.monotonic() < deadline, "the session never showed up"
            time.sleep(0.02)
        assert session.wait(timeout=10) == 255
    finally:
        session.kill()
        session.wait()


def test_a_stopped_server_comes_back_for_the_next_fleet(any_fleet: Fleet, tako_home: Path) -> None:
    (s1,) = any_fleet(1)
    s1.stop()
    assert subprocess.run(s1.ssh_command("true"), capture_output=True, timeout=20).returncode == 255
    s1.start()
    assert subprocess.run(s1.ssh_command("true"), capture_output=True, timeout=20).returncode == 0


def test_teardown_stops_processes_under_the_roots(any_fleet: Fleet, tako_home: Path) -> None:
    extra = Fleet(any_fleet.pool, tako_home)
    (s1,) = extra(1, register=False)
    (s1.root / "run").mkdir()
    # A detached process, as the agent is: its pid file is all the fleet knows about it.
    start = f"cd {s1.root} && (setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > run/agent.pid)"
    subprocess.run(s1.ssh_command(start), check=True, timeout=20)
    pid = s1.agent_pid()
    assert pid is not None
    assert Path(f"/proc/{pid}").exists()
    extra.close()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_three_fresh_sshd_start_in_under_a_second() -> None:
    kind = default_kind()
    pool = HostPool(kind, Path(tempfile.mkdtemp(prefix="tkpool")) / kind)
    try:
        started = time.monotonic()
        hosts = pool.hosts(3)
        elapsed = time.monotonic() - started
        assert all(h.alive() for h in hosts)
        assert elapsed < 1.0, f"3 hosts took {elapsed:.2f}s"
    finally:
        pool.close()


def test_fleet_uses_openssh_where_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert default_kind() == ("sshd" if SSHD.exists() else "inprocess")
    monkeypatch.setattr(fleet_module, "SSHD", tmp_path / "sshd")
    assert default_kind() == "inprocess"
    # In CI a missing sshd is a failure, never a silent fallback.
    monkeypatch.setenv("CI", "true")
    with pytest.raises(RuntimeError, match="install openssh-server"):
        default_kind()


def test_write_app_gives_a_config_that_resolves_to_the_fleet(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    servers = fleet(3)
    path = write_app(tmp_path, servers, release="python3 migrate.py")
    resolved = resolve(load_config(path), "production", load_inventory(tako_home))
    assert resolved.servers == tuple(s.server for s in servers)
    assert resolved.leader == servers[0].server
    assert resolved.release == "python3 migrate.py"
