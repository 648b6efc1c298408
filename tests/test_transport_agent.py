"""Installing and starting the agent over real SSH: `ensure_agent`, `tako servers setup|status`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import tako_core
from tako_core.config import Server
from tako_core.errors import AgentError
from tako_core.transport import Connection
from tako_core.transport.agent_setup import ensure_agent, install_agent, systemd_unit, systemd_unit_name
from tako_core.transport.agent_wheels import ServerPython
from tests.agentkit.kit import other_build
from tests.fleet import Fleet
from tests.procs import alive

TAKO = [sys.executable, "-m", "tako_tui.cli"]


def _tako(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAKO_HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"), **(env or {})}
    return subprocess.run([*TAKO, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_setup_then_status_then_setup_again_is_a_no_op(fleet: Fleet, tako_home: Path) -> None:
    s1, s2 = fleet(2)
    first = _tako("servers", "setup", "s1", "s2", home=tako_home)
    assert first.returncode == 0, first.stderr
    assert "s1  agent not running: installing tako-agent-" in first.stderr
    pids = [s1.agent_pid(), s2.agent_pid()]
    assert all(pid is not None and alive(pid) for pid in pids)

    status = _tako("servers", "status", home=tako_home)
    assert status.returncode == 0, status.stderr
    for name in ("s1", "s2"):
        assert f"{name}  agent {tako_core.__version__} (protocol 1) up" in status.stderr

    again = _tako("servers", "setup", "s1", "s2", home=tako_home)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr
    assert again.stderr.count("already current") == 2
    assert [s1.agent_pid(), s2.agent_pid()] == pids


def test_status_names_servers_without_an_agent_or_unreachable(fleet: Fleet, tako_home: Path) -> None:
    _, s2 = fleet(2)
    s2.stop()
    result = _tako("servers", "status", home=tako_home)
    assert result.returncode == 1
    assert "s1  no agent answers: run `tako servers setup s1`" in result.stderr
    assert (
        f"s2  failed: cannot connect to s2 ({s2.user}@{s2.address}:{s2.port}): connection refused"
        in result.stderr
    )
    assert "error: status: 2 server(s) not ready: s1, s2" in result.stderr
    assert "Traceback" not in result.stderr


def test_setup_ships_httptools_to_a_python_without_it(fleet: Fleet, tako_home: Path) -> None:
    (s1,) = fleet(1)
    # The fleet's python3 has no httptools of its own (setup would say so and ship nothing); the
    # agent's memory map proves the router loaded the shipped copy.
    result = _tako("servers", "setup", "s1", home=tako_home)
    assert result.returncode == 0, result.stderr
    assert "s1  HTTP parser: httptools, from httptools-" in result.stderr
    assert "HTTP parser httptools)" in result.stderr
    pid = s1.agent_pid()
    assert pid is not None
    loaded = [line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()]
    ours = str(s1.root / "bin" / "lib" / "httptools")
    assert any(path.startswith(ours) and path.endswith(".so") for path in loaded), loaded

    status = _tako("servers", "status", home=tako_home)
    assert "HTTP parser httptools," in status.stderr
    again = _tako("servers", "setup", "s1", "--restart", home=tako_home)
    assert again.returncode == 0, again.stderr
    assert "HTTP parser: httptools, from httptools-" in again.stderr  # the same wheel: not sent again


def test_setup_falls_back_to_h11_when_the_wheel_cannot_be_fetched(fleet: Fleet, tako_home: Path) -> None:
    fleet(1)
    offline = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    result = _tako("servers", "setup", "s1", home=tako_home, env=offline)
    assert result.returncode == 0, result.stderr
    assert "s1  HTTP parser: h11, pure Python (pip could not fetch httptools" in result.stderr
    assert "HTTP parser h11)" in result.stderr


def test_setup_of_an_unknown_server_is_bad_input(fleet: Fleet, tako_home: Path) -> None:
    fleet(1)
    result = _tako("servers", "setup", "s1", "nope", home=tako_home)
    assert result.returncode == 2
    assert "unknown server(s): nope" in result.stderr


async def test_an_install_that_fails_on_the_server_says_what_the_server_said(
    any_fleet: Fleet, tmp_path: Path
) -> None:
    """The install command ends bridged to the new agent; when it fails instead, its stderr is the
    error, as it was for a command that simply ran to its end."""
    (s1,) = any_fleet(1, register=False)
    blocker = s1.root / "a-file"
    blocker.write_text("")
    async with Connection.open(replace(s1.server, root=str(blocker))) as conn:
        failed = r"setting up the agent on s1 .* failed: mkdir: .*a-file"
        with pytest.raises(AgentError, match=failed) as caught:
            await ensure_agent(conn, cache_dir=tmp_path)
    assert caught.value.hint is not None
    assert "tako servers setup s1" in caught.value.hint


async def test_ensure_agent_replaces_a_stale_or_dead_agent(any_fleet: Fleet, tmp_path: Path) -> None:
    (s1,) = any_fleet(1, register=False)
    steps: list[str] = []
    async with Connection.open(s1.server) as conn:
        client = await ensure_agent(conn, on_step=steps.append, cache_dir=tmp_path)
        assert client.info.agent_version == tako_core.__version__
        await client.close()
        first = s1.agent_pid()
        assert steps[0].startswith("agent not running: installing")

        # Another build of tako installed it: replaced, in place (the same process execs the new build).
        await (await install_agent(conn, other_build(tmp_path), steps.append)).close()
        assert steps[-1] == "restarted the agent in place (detached)"
        assert s1.agent_pid() == first
        steps.clear()
        client = await ensure_agent(conn, on_step=steps.append, cache_dir=tmp_path)
        await client.close()
        assert steps[0].startswith("agent installed from another build of tako: installing tako-agent-")
        second = s1.agent_pid()
        assert second == first
        assert first is not None
        assert alive(first)

        # Stale but busy with someone's deploy: left alone, and the error names the holder.
        await (await install_agent(conn, other_build(tmp_path), steps.append)).close()
        second = s1.agent_pid()
        client = await conn.agent()
        await client.lease_acquire("web", "production", "ada@laptop (pid 7)", "b1")
        with pytest.raises(AgentError, match=r"web/production is being deployed by ada@laptop \(pid 7\)"):
            await ensure_agent(conn, cache_dir=tmp_path)
        assert s1.agent_pid() == second
        await client.lease_release("web", "production", "ada@laptop (pid 7)")
        await client.close()
        client = await ensure_agent(conn, cache_dir=tmp_path)  # free again: upgraded
        await client.close()
        second = s1.agent_pid()
        assert second is not None

        # Up to date: nothing happens.
        steps.clear()
        client = await ensure_agent(conn, on_step=steps.append, cache_dir=tmp_path)
        await client.close()
        assert steps == []
        assert s1.agent_pid() == second

        # Dead (its stale pid file left behind): started again.
        os.kill(second, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(second):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        steps.clear()
        client = await ensure_agent(conn, on_step=steps.append, cache_dir=tmp_path)
        await client.close()
        assert steps[0].startswith("agent not running: installing")
        assert s1.agent_pid() not in (None, second)


def test_systemd_unit_runs_the_agent_of_its_root() -> None:
    server = Server(name="web1", host="10.0.0.5", root="/srv/tako", http_port=8080, http_host="10.0.0.5")
    unit = systemd_unit(server)
    # The default HTTPS port is left out: the unit (and command line) of an agent set up before HTTPS
    # stays the same, so upgrading it restarts it in place and its instances keep running.
    assert (
        "ExecStart=/usr/bin/env python3 /srv/tako/bin/tako-agent.pyz serve --root /srv/tako "
        "--http-host 10.0.0.5 --http-port 8080\n" in unit
    )
    assert " --http-port 8080 --https-port 8443\n" in systemd_unit(replace(server, https_port=8443))
    hardening = ("Restart=always", "LimitNOFILE=65536", "UMask=0077", "NoNewPrivileges=yes", "PrivateTmp=yes")
    for line in hardening:
        assert f"\n{line}\n" in unit
    assert "ProtectSystem" not in unit  # the agent creates each app's user: useradd writes /etc
    assert "--client-user deploy\n" in systemd_unit(server, "deploy")
    assert systemd_unit_name("/opt/tako") == "tako-agent.service"
    assert systemd_unit_name("/srv/tako").startswith("tako-agent-")
    assert systemd_unit_name("/srv/tako") != systemd_unit_name("/srv/other")


async def test_the_agent_channel_survives_a_dropped_connection(any_fleet: Fleet, tmp_path: Path) -> None:
    (s1,) = any_fleet(1, register=False)
    async with Connection.open(s1.server) as conn:
        client = await ensure_agent(conn, cache_dir=tmp_path)
        assert s1.drop_connections() > 0
        with pytest.raises(AgentError):
            await asyncio.wait_for(client.status(), 10)
        await client.close()
        # What a deploy does after a drop: a new channel (the connection is re-established first).
        client = await conn.agent()
        assert client.info.agent_version == tako_core.__version__
        await client.close()


def test_the_wheel_fits_the_server_glibc_and_machine() -> None:
    platforms = ServerPython("cpython", "3.12", "aarch64", "glibc-2.28", False).platforms()
    assert isinstance(platforms, list)
    assert platforms[0] == "manylinux_2_28_aarch64"
    assert platforms[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    musl = ServerPython("cpython", "3.12", "x86_64", "-", False)
    assert musl.platforms() == "no manylinux wheel fits libc '-'"
    assert ServerPython("pypy", "3.10", "x86_64", "glibc-2.36", False).platforms() == "pypy is not CPython"
    assert ServerPython.parse("none") is None
