"""The router under abuse: stalled and trickled bodies, too many connections (real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tako_core.agent.router import Router
from tests.test_router import IO_TIMEOUT, App
from tests.test_router import apps as apps
from tests.test_router import backend as backend

POST = b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n"


async def answer(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the router closes; a reset (the client wrote after the close) ends it too."""
    try:
        return await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)
    except ConnectionError:
        return b"reset"


async def test_a_stalled_or_trickled_body_gets_408_and_frees_the_upstream(
    backend: str, apps: Callable[[str], App]
) -> None:
    r = Router("127.0.0.1", 0, backend=backend, body_timeout=0.4, request_timeout=1.2)
    await r.start()
    try:
        a = await apps("a").start()
        r.set_route("a", ["a.test"], [a.upstream])
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(POST + b"abc")  # the rest never comes
        assert (await answer(reader)).startswith(b"HTTP/1.1 408 ")
        assert loop.time() - started < 1.2
        writer.close()

        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(POST)
        for _ in range(9):  # a byte every 0.2 s never stalls, but takes longer than the whole request may
            await asyncio.sleep(0.2)
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:  # closed by the router
                break
        assert (await answer(reader)).startswith((b"HTTP/1.1 408 ", b"reset"))
        assert 1.2 <= loop.time() - started < 3.0
        writer.close()
        assert r.inflight(a.upstream) == 0
    finally:
        await r.stop()


async def test_connections_are_capped_overall_and_per_client(
    backend: str, apps: Callable[[str], App]
) -> None:
    r = Router("127.0.0.1", 0, backend=backend, max_connections=4, max_per_client=2)
    await r.start()
    opened: list[asyncio.StreamWriter] = []
    try:
        a = await apps("a").start()
        r.set_route("a", ["a.test"], [a.upstream])

        async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port, local_addr=(source, 0))
            opened.append(writer)
            writer.write(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            return reader, writer

        async def status(reader: asyncio.StreamReader) -> bytes:
            return (await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT))[9:12]

        first = [await connect("127.0.0.1") for _ in range(2)]
        assert [await status(reader) for reader, _ in first] == [b"200", b"200"]
        reader, _ = await connect("127.0.0.1")
        assert await status(reader) == b"503"  # a third from the same address
        others = [await connect("127.0.0.2") for _ in range(2)]
        assert [await status(reader) for reader, _ in others] == [b"200", b"200"]
        reader, _ = await connect("127.0.0.3")
        assert await status(reader) == b"503"  # five in all
        first[0][1].close()
        await asyncio.sleep(0.2)
        reader, _ = await connect("127.0.0.1")
        assert await status(reader) == b"200"  # a closed connection frees its place
    finally:
        for writer in opened:
            writer.close()
        await r.stop()
