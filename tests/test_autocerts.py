"""The pieces of automatic certificates a fleet test cannot easily provoke: a leader that stalls or
answers too much, and what Op.TLS_AUTO accepts (tests/test_tls_auto.py has the real thing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tako_core.agent import leader_link
from tako_core.agent.autocerts import AutoParams, params_from
from tako_core.agent.contract import ProtocolError
from tako_core.agent.leader_link import LeaderRef, SyncError, fetch_challenge
from tako_core.agent.params import Params

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PIN = "ab" * 32


@pytest.fixture
async def leader() -> AsyncIterator[Callable[[Handler], Awaitable[LeaderRef]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> LeaderRef:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return LeaderRef("127.0.0.1", port, port, token="t" * 43, pin=PIN)

    yield start
    for server in servers:
        server.close()


async def test_a_stalling_leader_costs_one_timeout(
    leader: Callable[[Handler], Awaitable[LeaderRef]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await reader.read()  # never answers: waits until the client gives up

    monkeypatch.setattr(leader_link, "FETCH_TIMEOUT", 0.3)
    ref = await leader(stall)
    with pytest.raises(SyncError, match="did not answer within"):
        await asyncio.wait_for(fetch_challenge(ref, "a" * 43, "shop.test"), 5)


async def test_an_oversized_answer_is_refused_and_a_404_is_none(
    leader: Callable[[Handler], Awaitable[LeaderRef]],
) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (1 << 20))
        await writer.drain()
        writer.close()

    async def missing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(1 << 16)
        assert b"\r\nx-tako-forwarded: 1\r\n" in request  # the leader never forwards it again
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    with pytest.raises(SyncError, match="over 4096 bytes"):
        await fetch_challenge(await leader(flood), "a" * 43, "shop.test")
    assert await fetch_challenge(await leader(missing), "a" * 43, "shop.test") is None


def _params(**given: object) -> AutoParams:
    base: dict[str, object] = {"names": ["Shop.Test"], "directory": "https://ca.test/dir"}
    return params_from(Params({**base, **given}))


def test_tls_auto_parameters_are_checked() -> None:
    assert _params().names == ("shop.test",)
    assert _params().leader is None
    follower = _params(
        leader={"host": "10.0.0.1", "http_port": 80, "https_port": 443, "token": "abc", "pin": PIN}
    )
    assert follower.leader == LeaderRef("10.0.0.1", 80, 443, token="abc", pin=PIN)
    assert "abc" not in repr(follower)  # the token is a secret: never in a repr or a traceback
    assert AutoParams.from_json(follower.to_json()) == follower
    malformed: list[dict[str, object]] = [
        {"names": ["*.shop.test"]},
        {"names": []},
        {"directory": "http://ca.test/dir"},
        {"leader": {"host": "h", "token": "abc", "pin": "not-hex"}},
        {"leader": {"host": "h", "token": "a b", "pin": PIN}},
    ]
    for bad in malformed:
        with pytest.raises(ProtocolError):
            _params(**bad)
