"""The agent as a daemon: the zipapp on the system's own Python, detaching, supervision, restore."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tako_core.agent.daemon import RESTART_SIGNAL
from tako_core.transport.agent_client import AgentClient, LeaseHeld
from tako_core.transport.agent_zipapp import build_id, build_zipapp
from tests.agentkit.kit import START, AgentProcess, Load, free_port, get, pack, start_agent
from tests.procs import alive

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: none of the venv's packages


def system_python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd), "TAKO_APP_USERS": "0"}
    return subprocess.run(
        [SYSTEM_PYTHON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_zipapp_detaches_on_the_system_python(tmp_path: Path) -> None:
    pyz = build_zipapp(tmp_path / "dist")
    assert re.fullmatch(r"tako-agent-0\.1\.0-[0-9a-f]{8}\.pyz", pyz.name)
    assert build_zipapp(tmp_path / "dist") == pyz  # cached by content hash
    assert system_python(str(pyz), "version", cwd=tmp_path).stdout == "0.1.0 1\n"

    root = tmp_path / "root"
    serve = [
        str(pyz),
        "serve",
        "--root",
        str(root),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(free_port()),
        "--https-port",
        "0",
        "--detach",
    ]
    started = system_python(*serve, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    pid = int((root / "run/agent.pid").read_text())
    try:
        client = await AgentClient.open_unix(root / "run/tako.sock")
        assert pyz.name.endswith(f"-{client.info.build_id}.pyz")
        assert client.info.build_id == build_id()
        probe = system_python("-c", "import platform; print(platform.python_version())", cwd=tmp_path)
        assert client.info.python == probe.stdout.strip()
        assert "zst" in client.info.codecs  # through the zstd binary: no zstandard module here
        # The system Python (Debian 12: 3.11.2, no tarfile data filter) still unpacks, checked by hand.
        pack(root / "uploads/x1.tar.zst", "x1")
        await client.prepare(
            "app", "prod", "x1", "x1.tar.zst", install=None, env_vars={}, secrets={}, on_output=lambda _: None
        )
        assert await client.has_release("app", "prod", "x1")
        await client.close()

        again = system_python(*serve, cwd=tmp_path)
        assert again.returncode == 1
        assert "another agent is running" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            await asyncio.sleep(0.05)
    assert not alive(pid)
    assert not (root / "run/tako.sock").exists()


async def roll_out(agent: AgentProcess, client: AgentClient, build: str = "r1", instances: int = 2) -> None:
    """keep/prod: `instances` instances of release `build` (answering its name), routed as keep.test."""
    pack(agent.root / f"uploads/{build}.tar.zst", build)
    await client.prepare(
        "keep",
        "prod",
        build,
        f"{build}.tar.zst",
        install=None,
        env_vars={},
        secrets={},
        on_output=lambda _: None,
    )
    await client.rollout(
        "keep",
        "prod",
        build,
        start=START,
        instances=instances,
        health_path="/",
        routes=["keep.test"],
        env_vars={},
        secrets={},
        on_progress=lambda d, t: None,
    )


async def test_instances_are_supervised_and_restored_after_an_agent_restart(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", tmp_path / "pyz")
    try:
        client = await agent.client()
        await roll_out(agent, client)
        [status] = await client.status()
        victim = status.instances[0]
        assert victim.pid is not None
        os.killpg(victim.pid, signal.SIGKILL)
        for _ in range(100):  # restarted after a 1 s backoff
            [status] = await client.status()
            if status.instances[0].restarts == 1 and status.instances[0].running:
                break
            await asyncio.sleep(0.05)
        assert status.instances[0].restarts == 1
        assert status.instances[0].pid != victim.pid
        for _ in range(50):
            assert await get(agent.http_port, "keep.test") == (200, "r1")
        pids = [i.pid for i in status.instances if i.pid]
        await client.lease_acquire("keep", "prod", "ann@laptop", "r1", ttl=600)
        await client.close()
    finally:
        agent.stop()
    assert agent.proc.returncode == 0
    assert not any(alive(pid) for pid in pids)  # the agent took its instances down with it

    restarted = start_agent(tmp_path / "root", tmp_path / "pyz", http_port=agent.http_port)
    try:
        answer: tuple[int, str] | None = None
        for _ in range(100):  # no client involved: the agent restores from state.json
            try:
                answer = await get(restarted.http_port, "keep.test")
                if answer[0] == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        assert answer == (200, "r1")
        client = await restarted.client()
        [status] = await client.status()
        assert status.running == "r1"
        assert len(status.instances) == 2
        assert status.lease is not None
        assert status.lease.holder == "ann@laptop"  # leases outlive the agent
        with pytest.raises(LeaseHeld):
            await client.lease_acquire("keep", "prod", "bob@ci", "r2")
        orphans = [i.pid for i in status.instances if i.pid]
        await client.close()
    finally:
        restarted.proc.kill()  # no chance to stop its instances: they live on, holding their ports
        restarted.proc.wait()
    assert all(alive(pid) for pid in orphans)

    third = start_agent(tmp_path / "root", tmp_path / "pyz", http_port=agent.http_port)
    try:
        client = await third.client()
        [status] = await client.status()
        assert sorted(i.pid for i in status.instances if i.pid) == sorted(orphans)  # adopted, not respawned
        assert all(i.running and i.restarts == 0 for i in status.instances)
        assert await get(third.http_port, "keep.test") == (200, "r1")
        os.killpg(orphans[0], signal.SIGKILL)  # an adopted instance dies: restarted as any other
        for _ in range(100):
            [status] = await client.status()
            if any(i.restarts == 1 and i.running for i in status.instances):
                break
            await asyncio.sleep(0.05)
        assert sorted(i.restarts for i in status.instances) == [0, 1]
        assert orphans[0] not in [i.pid for i in status.instances]
        pids = [i.pid for i in status.instances if i.pid]
        await client.close()
    finally:
        third.stop()
    assert not any(alive(pid) for pid in pids)  # SIGTERM: the agent takes adopted ones down too


async def test_a_restart_in_place_under_keep_alive_load_drops_nothing_and_keeps_every_instance(
    tmp_path: Path,
) -> None:
    agent = start_agent(tmp_path / "root", tmp_path / "pyz", extra=["--trusted-proxy", "127.0.0.9"])
    try:
        client = await agent.client()
        await roll_out(agent, client)
        [before] = await client.status()
        await client.close()
        load = Load(agent.http_port, "keep.test", max_seconds=30)
        load.start()
        await asyncio.sleep(0.5)
        served_before = len(load.samples)
        agent.proc.send_signal(RESTART_SIGNAL)
        for _ in range(200):  # the socket goes, then the same process serves it again
            await asyncio.sleep(0.05)
            if not agent.socket.exists():
                break
        for _ in range(200):
            await asyncio.sleep(0.05)
            if agent.socket.exists():
                break
        client = await agent.client()
        [after] = await client.status()
        await client.close()
        await asyncio.sleep(0.5)
        await load.stop()
        assert agent.proc.poll() is None  # the same process, exec'd anew
        # with the same command line: its router keeps the proxies it trusts
        cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--trusted-proxy" in cmdline
        assert cmdline[cmdline.index(b"--trusted-proxy") + 1] == b"127.0.0.9"
        assert [i.pid for i in after.instances] == [i.pid for i in before.instances]
        assert all(i.running and i.restarts == 0 for i in after.instances)
        assert len(load.samples) > served_before + 10
        assert not load.failed, load.errors[:5]

        # A rollout replaces the adopted instances as any others: stopped, and reaped (no zombie).
        client = await agent.client()
        await roll_out(agent, client, "r2", instances=1)
        await client.close()
        assert await get(agent.http_port, "keep.test") == (200, "r2")
        for i in before.instances:
            assert i.pid is not None
            assert not os.path.exists(f"/proc/{i.pid}")
    finally:
        agent.stop()


async def test_an_https_port_it_cannot_bind_leaves_http_serving(tmp_path: Path) -> None:
    # As for port 443 under an agent set up before HTTPS without root: it starts, says why, serves HTTP.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = start_agent(tmp_path / "root", tmp_path / "pyz", extra=["--https-port", str(port)])
        try:
            client = await agent.client()
            await roll_out(agent, client)
            await client.close()
            assert await get(agent.http_port, "keep.test") == (200, "r1")
        finally:
            agent.stop()
    assert agent.proc.returncode == 0
    log = (tmp_path / "root" / "log" / "agent.log").read_text()
    assert f"router: no HTTPS: cannot listen on 127.0.0.1:{port}" in log, log
