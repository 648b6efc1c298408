"""Faults the agent survives, with a real agent process: a full disk during extract, archive bombs,
upload names of different apps, an oversized lease holder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tako_core.agent.contract import upload_name
from tako_core.errors import TransportError
from tako_core.transport.agent_client import AgentClient, AgentReplyError
from tests.agentkit.kit import AgentProcess, get, pack, start_agent
from tests.test_agent import agent as agent
from tests.test_agent import client as client
from tests.test_agent import roll


@pytest.fixture
def small_disk(agent: AgentProcess) -> Iterator[Path]:
    """apps/full on its own 4 MiB tmpfs with 400 inodes (the tests run as root)."""
    mount = agent.root / "apps" / "full"
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=400", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def prepare(client: AgentClient, agent: AgentProcess, app: str, build: str, **extra: str) -> None:
    upload = f"{upload_name(app, 'prod', build)}.tar.zst"
    pack(agent.root / "uploads" / upload, build, extra=extra)
    await client.prepare(
        app, "prod", build, upload, install=None, env_vars={}, secrets={}, on_output=lambda _: None
    )


def many_files(path: Path, count: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    return path


async def test_disk_full_during_extract_is_a_clean_error_and_current_stays(
    agent: AgentProcess, client: AgentClient, small_disk: Path
) -> None:
    await prepare(client, agent, "full", "f1")
    await roll(client, "full", "f1")
    await client.finalize("full", "prod", "f1")
    releases = small_disk / "prod" / "releases"

    # 32 MiB of zeros (a few KB packed) on a 4 MiB disk: refused while streaming, before it fills.
    with pytest.raises(AgentReplyError, match="more than this server can hold") as bomb:
        await prepare(client, agent, "full", "f2", big="\0" * (32 << 20))
    assert "Traceback" not in bomb.value.message
    # More members than the disk has inodes.
    upload = f"{upload_name('full', 'prod', 'f3')}.tar.gz"
    many_files(agent.root / "uploads" / upload, 1000)
    with pytest.raises(AgentReplyError, match="more than this server can hold"):
        await client.prepare(
            "full", "prod", "f3", upload, install=None, env_vars={}, secrets={}, on_output=lambda _: None
        )

    # Nothing half-written: f1 and its stat record (agent/stamps.py) alone.
    assert sorted(p.name for p in releases.iterdir()) == [".f1.stamps", "f1"]
    assert os.readlink(small_disk / "prod" / "current") == "releases/f1"
    assert await get(agent.http_port, "full.test") == (200, "f1")


async def test_upload_names_of_different_apps_never_meet(agent: AgentProcess, client: AgentClient) -> None:
    assert upload_name("a-b", "c", "x1") != upload_name("a", "b-c", "x1")
    upload = agent.root / "uploads" / f"{upload_name('a-b', 'c', 'x1')}.tar.zst"
    pack(upload, "from-a-b")
    pack(agent.root / "uploads" / f"{upload_name('a', 'b-c', 'x1')}.tar.zst", "from-a")
    await client.prepare(
        "a-b",
        "c",
        "x1",
        str(upload.relative_to(agent.root / "uploads")),
        install=None,
        env_vars={},
        secrets={},
        on_output=lambda _: None,
    )
    assert (agent.root / "apps/a-b/c/releases/x1/version.txt").read_text() == "from-a-b\n"


async def test_an_oversized_lease_holder_is_refused(client: AgentClient) -> None:
    with pytest.raises(AgentReplyError, match="at most 200 characters"):
        await client.lease_acquire("big", "prod", "x" * 900_000, "b1")
    with pytest.raises(AgentReplyError, match="printable"):
        await client.lease_acquire("big", "prod", "alice\n\x1b[2J", "b1")
    info = await client.lease_acquire("big", "prod", "alice@laptop (deploy 1a2b3c)", "b1")
    assert info.holder == "alice@laptop (deploy 1a2b3c)"


async def test_stalled_posts_never_silence_the_control_socket(tmp_path: Path) -> None:
    """With the fd limit at 96, 100 stalled POSTs from one client once left the agent deaf."""
    agent = start_agent(
        tmp_path / "root", tmp_path / "pyz", extra=["--trusted-proxy", "127.0.0.9"], max_fds=96
    )
    opened: list[asyncio.StreamWriter] = []
    try:
        client = await agent.client()
        await prepare(client, agent, "slow", "s1")
        await roll(client, "slow", "s1")
        await client.close()
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", agent.http_port)
            except OSError:
                continue
            opened.append(writer)
            writer.write(b"POST / HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 100\r\n\r\n")
        await asyncio.sleep(1.0)
        # The router kept a reserve: descriptors are left for the control socket and its replies.
        assert len(os.listdir(f"/proc/{agent.proc.pid}/fd")) <= 96 - 16
        fresh = await asyncio.wait_for(agent.client(), 10)  # a new control connection, answered
        try:
            assert [s.app for s in await asyncio.wait_for(fresh.status(), 10)] == ["slow"]
        finally:
            await fresh.close()
    finally:
        for writer in opened:
            writer.close()
        agent.stop()


async def test_an_agent_killed_mid_rollout_comes_back_serving_the_old_build(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", tmp_path / "pyz")
    pids: set[int] = set()

    try:
        client = await agent.client()
        await prepare(client, agent, "kill", "k1")
        await roll(client, "kill", "k1")
        await client.finalize("kill", "prod", "k1")
        upload = f"{upload_name('kill', 'prod', 'k2')}.tar.zst"
        pack(agent.root / "uploads" / upload, "k2", mode="unhealthy")  # its rollout waits on health
        await client.prepare(
            "kill", "prod", "k2", upload, install=None, env_vars={}, secrets={}, on_output=lambda _: None
        )
        rolling = asyncio.ensure_future(roll(client, "kill", "k2"))
        await asyncio.sleep(1.0)
        pids.update(i.pid for s in await (await agent.client()).status() for i in s.instances if i.pid)
        agent.proc.kill()  # SIGKILL: no shutdown, no state written
        agent.proc.wait()
        with pytest.raises((AgentReplyError, ConnectionError, OSError, TransportError)):
            await rolling
    finally:
        agent.stop()
        for pid in pids:  # a SIGKILLed agent cannot take its instances along
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    restarted = start_agent(tmp_path / "root", tmp_path / "pyz", http_port=agent.http_port)
    try:
        answer: tuple[int, str] | None = None
        for _ in range(100):
            with contextlib.suppress(OSError):
                answer = await get(restarted.http_port, "kill.test")
                if answer == (200, "k1"):
                    break
            await asyncio.sleep(0.1)
        assert answer == (200, "k1")
        assert os.readlink(restarted.root / "apps/kill/prod/current") == "releases/k1"
        client = await restarted.client()
        await prepare(client, restarted, "kill", "k3")
        await roll(client, "kill", "k3")
        await client.finalize("kill", "prod", "k3")
        assert await get(restarted.http_port, "kill.test") == (200, "k3")
        await client.close()
    finally:
        restarted.stop()
