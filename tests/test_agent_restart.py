"""Agent restarts that drop nothing, over real sshd: `tako servers setup --restart` and an upgrade to
another agent build, each under keep-alive load on every router of a 3-server fleet."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tako_core.errors import AgentError
from tako_core.transport import Connection
from tako_core.transport.agent_client import AgentClient
from tako_core.transport.agent_setup import install_agent
from tests.agentkit.kit import Load, other_build
from tests.deploykit import TAKO, sample_app, tako
from tests.fleet import Fleet, FleetServer


async def agent(server: FleetServer) -> AgentClient:
    """A client of the server's agent, once it answers (bounded)."""
    for _ in range(200):
        try:
            return await AgentClient.open_unix(server.root / "run" / "tako.sock")
        except AgentError:
            await asyncio.sleep(0.05)
    return await AgentClient.open_unix(server.root / "run" / "tako.sock")


async def instance_pids(server: FleetServer) -> list[int | None]:
    client = await agent(server)
    try:
        [status] = await client.status()
    finally:
        await client.close()
    assert all(i.running and i.restarts == 0 for i in status.instances)
    return [i.pid for i in status.instances]


async def under_load(servers: list[FleetServer], *args: str, cwd: Path) -> list[Load]:
    """Run `tako *args` while every router serves keep-alive load; the loads, stopped."""
    loads = [
        Load(s.http_port, "web.test", address=s.http_host, connections=2, max_seconds=90) for s in servers
    ]
    for load in loads:
        load.start()
    await asyncio.sleep(0.3)
    proc = await asyncio.create_subprocess_exec(*TAKO, *args, cwd=cwd, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    await asyncio.sleep(0.3)
    for load in loads:
        await load.stop()
    assert proc.returncode == 0, err.decode()
    return loads


async def test_restart_and_upgrade_of_every_agent_under_load_fail_no_request_and_keep_every_instance(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    servers = fleet(3)
    cfg = sample_app(tmp_path, servers)
    deployed = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert deployed.code == 0, deployed.stderr
    pids = [await instance_pids(s) for s in servers]
    agents = [s.agent_pid() for s in servers]

    names = [s.name for s in servers]
    for load in await under_load(servers, "servers", "setup", "--restart", *names, cwd=tako_home):
        assert load.failed == [], load.errors[:5]
        assert len(load.samples) > 20
    assert [await instance_pids(s) for s in servers] == pids
    assert [s.agent_pid() for s in servers] == agents  # restarted in place

    other = other_build(tmp_path)
    for s in servers:  # another build runs now: the next setup upgrades every agent
        async with Connection.open(s.server) as conn:
            await (await install_agent(conn, other, lambda _: None)).close()
    for s in servers:
        client = await agent(s)
        assert client.info.build_id == "other"
        await client.close()
    assert [await instance_pids(s) for s in servers] == pids

    for load in await under_load(servers, "servers", "setup", *names, cwd=tako_home):
        assert load.failed == [], load.errors[:5]
        assert len(load.samples) > 20
    assert [await instance_pids(s) for s in servers] == pids
    for s in servers:
        client = await agent(s)
        assert client.info.build_id != "other"
        await client.close()
    assert [s.agent_pid() for s in servers] == agents  # upgraded in place
