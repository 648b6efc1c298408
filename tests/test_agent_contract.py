"""The wire contract across versions: a client and an agent one field apart still read each other.

The other version is a real agent, run from a zipapp whose sources are edited as that version would
have them; the client is this tree's.
"""

from __future__ import annotations

import re
import socket
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tako_core.agent.contract import (
    AgentInfo,
    AppStatus,
    InstanceStatus,
    Json,
    LeaseInfo,
    Op,
    ProtocolError,
    Status,
    decode,
    encode,
    request,
)
from tako_core.transport.agent_zipapp import sources
from tests.agentkit.kit import AgentProcess, start_agent

CONTRACT = "tako_core/agent/contract.py"
SERVICE = "tako_core/agent/service.py"

Edit = Callable[[str], str]


def sub(pattern: str, replacement: str) -> Edit:
    """An edit of one source file that must apply exactly once (so a stale edit fails loudly)."""

    def edit(text: str) -> str:
        edited, count = re.subn(pattern, replacement, text)
        assert count == 1, f"{pattern!r} matched {count} times"
        return edited

    return edit


def other_agent(tmp_path: Path, edits: dict[str, list[Edit]]) -> Iterator[AgentProcess]:
    """An agent of another version: this tree's zipapp with `edits` applied to its sources."""
    files = sources()
    for name, changes in edits.items():
        text = files[name].decode()
        for change in changes:
            text = change(text)
        files[name] = text.encode()
    pyz = tmp_path / "other-agent.pyz"
    with zipfile.ZipFile(pyz, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    agent = start_agent(tmp_path / "root", tmp_path / "pyz", zipapp=pyz)
    yield agent
    agent.stop()


def raw_reply(agent: AgentProcess, op: Op, params: Json) -> Json:
    """The final reply line to one request, undecoded by any client."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(agent.socket))
        sock.sendall(encode(request(1, op, params)))
        with sock.makefile("rb") as lines:
            return decode(lines.readline())


@pytest.fixture
def newer_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A later agent whose LeaseInfo has one more field (with a default, as the contract asks)."""
    yield from other_agent(
        tmp_path, {CONTRACT: [sub(r"\n    ttl: float\n", '\n    ttl: float\n    region: str = "eu-1"\n')]}
    )


@pytest.fixture
def older_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An earlier agent, from before hello reported the zipapp's build id."""
    yield from other_agent(
        tmp_path,
        {
            CONTRACT: [sub(r"\n    build_id: .*", "")],
            SERVICE: [sub(r"\n            build_id=_build_id\(\),", "")],
        },
    )


async def test_a_client_reads_a_newer_agent_with_a_field_it_does_not_know(newer_agent: AgentProcess) -> None:
    client = await newer_agent.client()
    try:
        lease = await client.lease_acquire("shop", "prod", "ann@laptop", "b1")
        [status] = await client.status()
    finally:
        await client.close()
    assert raw_reply(newer_agent, Op.STATUS, {})["apps"][0]["lease"]["region"] == "eu-1"
    assert status.lease == lease
    assert (lease.holder, lease.build, lease.ttl) == ("ann@laptop", "b1", 30.0)


async def test_a_client_reads_an_older_agent_without_a_newer_field(older_agent: AgentProcess) -> None:
    assert "build_id" not in raw_reply(older_agent, Op.HELLO, {})
    client = await older_agent.client()
    await client.close()
    assert client.info.build_id is None  # the default
    assert client.info.protocol == 1


def test_nested_messages_ignore_unknown_fields_and_fill_defaults() -> None:
    instance: dict[str, Any] = {
        "index": 0,
        "build": "b1",
        "port": 9000,
        "pid": 7,
        "running": True,
        "restarts": 0,
        "inflight": 2,
    }
    lease = {"holder": "ann", "build": "b1", "started_at": 1.5, "ttl": 30.0, "renewed": 2.5}
    app = {
        "app": "shop",
        "env": "prod",
        "current": "b1",
        "running": "b1",
        "routes": ["shop.test"],
        "user": "tako-shop-prod",
        "shares_agent_user": False,
        "instances": [{**instance, "memory": 1 << 20}],
        "lease": lease,
        "paused": False,
    }
    status = Status.from_wire({"id": 3, "ok": True, "apps": [app], "took": 0.1})
    assert status == Status(
        apps=(
            AppStatus(
                app="shop",
                env="prod",
                current="b1",
                running="b1",
                routes=("shop.test",),
                instances=(InstanceStatus(**instance),),
                lease=LeaseInfo(holder="ann", build="b1", started_at=1.5, ttl=30.0),
                user="tako-shop-prod",
                shares_agent_user=False,
            ),
        )
    )
    assert Status.from_wire(status.to_wire()) == status
    hello = {"agent_version": "0.1.0", "protocol": 1, "hostname": "h", "python": "3.10.13", "free_bytes": 1}
    assert AgentInfo.from_wire({**hello, "codecs": ["gz"]}).build_id is None
    with pytest.raises(ProtocolError, match="lacks 'codecs'"):  # a field every version sends
        AgentInfo.from_wire(hello)
