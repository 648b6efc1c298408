"""The delay proxy (tests/delayproxy.py) over real loopback sockets: the delay is there, bytes arrive
intact and in order, pacing holds its rate, a full queue pushes back, a close travels both ways; and
a deploy to a fleet behind it verifies host keys by the proxy's port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tako_core.config import load_inventory
from tests.delayproxy import DelayProxy, Link
from tests.deploykit import get, sample_app, tako
from tests.fleet import Fleet, FleetServer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def proxied(handler: Handler, link: Link) -> AsyncIterator[int]:
    """A server on 127.0.0.1 running `handler` per connection, and the proxy port in front of it."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        with DelayProxy([("127.0.0.1", server.sockets[0].getsockname()[1])], link) as proxy:
            yield proxy.ports[0]
    finally:
        server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def test_a_round_trip_takes_twice_the_delay_and_a_new_connection_one_more() -> None:
    delay = 0.025
    async with proxied(echo, Link(delay)) as port:
        # The first exchange is timed from the connect: the proxy dials the upstream when it accepts,
        # so time spent here between connect and write would hide the handshake's round trip.
        began = time.monotonic()
        reader, writer = await connect(port)
        times = []
        for _ in range(12):
            writer.write(b"p")
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"p"
            times.append(time.monotonic() - began)
            began = time.monotonic()
        writer.close()
    first, rest = times[0], times[1:]
    # The first exchange also pays TCP's handshake: 2 round trips.
    assert 4 * delay - 0.001 <= first < 4 * delay + 0.1
    assert min(rest) >= 2 * delay - 0.001  # never early (1 ms: the two processes' clocks' rounding)
    assert statistics.median(rest) < 2 * delay + 0.02  # generous: 2 cores shared with other jobs


@pytest.mark.parametrize("link", [Link(0.005), Link(0.005, rate=40e6)], ids=["delayed", "delayed+paced"])
async def test_bytes_arrive_intact_and_in_order_both_ways_at_once(link: Link) -> None:
    rng = random.Random(7)
    payload = rng.randbytes(3_000_000)
    async with proxied(echo, link) as port:
        reader, writer = await connect(port)

        async def send() -> None:
            sent = 0
            while sent < len(payload):
                size = rng.choice((1, 7, 1000, 4096, 65536, 200_000))
                writer.write(payload[sent : sent + size])
                sent += size
                await writer.drain()
                if rng.random() < 0.05:
                    await asyncio.sleep(rng.random() * 0.01)
            writer.write_eof()

        async def receive() -> bytes:
            chunks = []
            while data := await reader.read(rng.choice((1, 100, 65536))):
                chunks.append(data)
            return b"".join(chunks)

        _, back = await asyncio.wait_for(asyncio.gather(send(), receive()), 60)
        writer.close()
    assert len(back) == len(payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


async def test_pacing_holds_the_configured_rate() -> None:
    rate, size = 2_000_000.0, 1_000_000
    arrived = asyncio.get_running_loop().create_future()

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(65536):
            total += len(data)
            if total >= size and not arrived.done():
                arrived.set_result(time.monotonic())
        writer.close()

    async with proxied(count, Link(0.0, rate=rate)) as port:
        _, writer = await connect(port)
        began = time.monotonic()
        writer.write(bytes(size))
        await writer.drain()
        finished = await asyncio.wait_for(arrived, 10)
        writer.close()
    measured = size / (finished - began)
    assert rate * 0.85 <= measured <= rate * 1.15


async def test_a_full_queue_stops_the_sender_until_the_receiver_reads() -> None:
    """A receiver that does not read: the sender stalls after the proxy's buffer and the sockets'
    buffers are full, far short of what it wants to send; once the receiver reads, everything comes."""
    want = 96 * 1024 * 1024
    reading = asyncio.Event()
    received = asyncio.get_running_loop().create_future()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reading.wait()
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        received.set_result(total)
        writer.close()

    chunk = bytes(1 << 20)
    async with proxied(slow, Link(0.0, buffer=1 << 20)) as port:
        _, writer = await connect(port)
        sent = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while sent < want:
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
        stalled_at = sent
        reading.set()
        while sent < want:
            writer.write(chunk)
            sent += len(chunk)
            await asyncio.wait_for(writer.drain(), 10)
        writer.write_eof()
        total = await asyncio.wait_for(received, 30)
        writer.close()
    assert stalled_at < want // 2, f"the sender got {stalled_at} bytes out with nobody reading"
    assert total == want


async def test_a_close_on_either_side_closes_the_other() -> None:
    delay = 0.01
    server_saw_eof = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(10)
        if first == b"server closes":
            writer.close()
            return
        server_saw_eof.set_result(await reader.read(10) == b"")
        writer.close()

    async with proxied(handler, Link(delay)) as port:
        # The client closes: the server reads the end of the stream.
        _, writer = await connect(port)
        writer.write(b"hello")
        await writer.drain()
        writer.close()
        assert await asyncio.wait_for(server_saw_eof, 5)

        # The server closes: the client reads the end of the stream.
        reader, writer = await connect(port)
        writer.write(b"server closes")
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()

        # The proxy stops: its connections end with it.
        reader, writer = await connect(port)
        writer.write(b"x")
        await writer.drain()
    assert await asyncio.wait_for(reader.read(10), 5) == b""
    writer.close()


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DelayProxy([("192.0.2.1", 22)], Link(0.01))


def test_a_deploy_through_the_proxy_verifies_host_keys_by_the_proxy_port(
    delayed_fleet: Callable[[int, Link], list[FleetServer]], tako_home: Path, tmp_path: Path
) -> None:
    servers = delayed_fleet(2, Link.of(rtt_ms=20))
    inventory = load_inventory(tako_home).servers
    assert [inventory[s.name].port for s in servers] == [s.port for s in servers]
    assert [s.port for s in servers] != [s.host.port for s in servers]  # the proxy's, not sshd's
    # The known_hosts file names only the proxy's ports: reaching sshd any other way would fail.
    ports = {line.split()[0] for line in servers[0].known_hosts.read_text().splitlines()}
    assert ports == {f"[{s.address}]:{s.port}" for s in servers}

    cfg = sample_app(tmp_path, servers, release="python3 migrate.py")
    run = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    for s in servers:
        assert get(s).startswith("v1 ")


def test_system_ssh_through_the_proxy_looks_the_host_key_up_by_the_proxy_port(
    fleet: Fleet, delayed_fleet: Callable[[int, Link], list[FleetServer]]
) -> None:
    (server,) = delayed_fleet(1, Link.of(rtt_ms=10))
    through = subprocess.run(server.ssh_command("true"), capture_output=True, text=True, timeout=30)
    assert through.returncode == 0, through.stderr
    # The fleet's own known_hosts has the same key under sshd's port: not good enough for the proxy's.
    direct = subprocess.run(
        server.ssh_command("true", known_hosts=fleet.known_hosts), capture_output=True, text=True, timeout=30
    )
    assert direct.returncode == 255
    assert "host key" in direct.stderr.lower()
