"""The agent's HTTP router against real sockets: real upstream servers, real clients, both parsers."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import h11
import pytest

from tako_core.agent.router import Router, Upstream

pytestmark = pytest.mark.timeout(60)

IO_TIMEOUT = 5.0


# --- a real upstream: an asyncio HTTP/1.1 server (h11) that says who it is -----------------------


@dataclass
class App:
    name: str
    server: asyncio.Server | None = None
    connections: int = 0
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)  # method, target, body
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # /slow waits for it
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set when /slow arrives
    answer_once: bool = False  # close (without answering) a connection's second request

    @property
    def upstream(self) -> Upstream:
        assert self.server is not None
        return Upstream("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def start(self) -> App:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        answered = 0
        try:
            while True:
                request, body = await _receive_request(conn, reader)
                if request is None:
                    return
                if self.answer_once and answered:
                    return
                target = request.target.decode()
                self.requests.append((request.method.decode(), target, body))
                if target == "/upgrade":
                    await self._upgrade(conn, reader, writer)
                    return
                if target == "/split":  # head and body go out as two writes: Nagle on, as many apps do
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
                if target in RAW_ANSWERS:  # broken upstream behaviour, written by hand
                    writer.write(RAW_ANSWERS[target])
                    await writer.drain()
                    return
                if target == "/slow":
                    self.arrived.set()
                    await self.gate.wait()
                status, headers, payload = self._answer(request, target, body)
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                if payload and request.method != b"HEAD":
                    if target == "/chunked":  # several chunks, framed by h11 as chunked
                        for i in range(0, len(payload), 1000):
                            writer.write(conn.send(h11.Data(data=payload[i : i + 1000])))
                    else:
                        writer.write(conn.send(h11.Data(data=payload)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                answered += 1
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    def _answer(
        self, request: h11.Request, target: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        me = [("X-Upstream", self.name)]
        if target == "/headers":
            seen = {k.decode(): v.decode() for k, v in request.headers}
            payload = json.dumps(seen).encode()
            return 200, [*me, ("Content-Length", str(len(payload)))], payload
        if target == "/echo":
            return 200, [*me, ("Content-Length", str(len(body)))], body
        if target == "/chunked":
            return 200, me, body  # no length: h11 sends it chunked
        if target == "/204":
            return 204, me, b""
        if target == "/304":
            return 304, [*me, ("ETag", '"v1"')], b""
        if target == "/close":
            return 200, [*me, ("Connection", "close"), ("Content-Length", "3")], b"bye"
        payload = self.name.encode()
        return 200, [*me, ("Content-Length", str(len(payload)))], payload

    async def _upgrade(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            conn.send(
                h11.InformationalResponse(
                    status_code=101, headers=[("Connection", "upgrade"), ("Upgrade", "echo")]
                )
            )
        )
        leftover = conn.trailing_data[0]
        if leftover:
            writer.write(leftover.upper())
        for _ in range(100):  # echo upper-cased until the client closes
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data.upper())
            await writer.drain()


RAW_ANSWERS = {
    "/die": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",  # dies mid-body
    "/garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


async def _receive_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        else:  # ConnectionClosed, PAUSED
            return None, b""


# --- a real client: keep-alive connection, responses parsed by h11 --------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int] = field(default_factory=list)


class Client:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        self.port = port
        self.tls = tls
        self.server_name = server_name
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def open(self) -> Client:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.tls, server_hostname=self.server_name
        )
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        host: str = "a.test",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        chunks: Sequence[bytes] | None = None,
    ) -> Reply:
        assert self.writer is not None
        hdrs = [("Host", host), *headers]
        if body is not None:
            hdrs.append(("Content-Length", str(len(body))))
        if chunks is not None:
            hdrs.append(("Transfer-Encoding", "chunked"))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        for piece in [body] if body is not None else chunks or []:
            data += self.conn.send(h11.Data(data=piece))
        data += self.conn.send(h11.EndOfMessage())
        self.writer.write(data)
        return await self.response()

    def expect(self, method: str, target: str = "/", host: str = "a.test") -> None:
        """Tell h11 a request was sent by hand (pipelining), so it can parse the response."""
        self.conn.send(h11.Request(method=method, target=target, headers=[("Host", host)]))
        self.conn.send(h11.EndOfMessage())

    async def response(self) -> Reply:
        assert self.reader is not None
        reply: Reply | None = None
        informational: list[int] = []
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), IO_TIMEOUT))
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                reply = Reply(event.status_code, {k.decode(): v.decode() for k, v in event.headers}, b"")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert reply is not None
                reply.body = body
                reply.informational = informational
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return reply
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def closed_by_peer(self) -> bool:
        assert self.reader is not None
        return await asyncio.wait_for(self.reader.read(1), IO_TIMEOUT) == b""


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes, read until the router closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)
    finally:
        writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(params=["httptools", "h11"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def router(backend: str) -> AsyncIterator[Router]:
    r = Router("127.0.0.1", 0, backend=backend)
    await r.start()
    assert r.backend == backend
    yield r
    await r.stop()


@pytest.fixture
async def apps() -> AsyncIterator[Callable[[str], App]]:
    started: list[App] = []

    def make(name: str) -> App:
        app = App(name)
        started.append(app)
        return app

    yield make
    for app in started:
        if app.server is not None:
            await app.stop()


async def client(router: Router) -> Client:
    return await Client(router.port).open()


# --- routing --------------------------------------------------------------------------------------


async def test_routes_by_host_case_and_port_insensitive(router: Router, apps: Callable[[str], App]) -> None:
    a, b, w = await apps("a").start(), await apps("b").start(), await apps("w").start()
    router.set_route("a", ["a.test"], [a.upstream])
    router.set_route("b", ["B.test"], [b.upstream])
    router.set_route("w", ["*.wild.test"], [w.upstream])
    c = await client(router)
    assert (await c.request(host="a.test")).body == b"a"
    assert (await c.request(host="B.TEST:8080")).body == b"b"
    assert (await c.request(host="x.y.Wild.test")).body == b"w"
    missing = await c.request(host="other.test")
    assert missing.status == 404
    assert b"no app" in missing.body
    assert (await c.request(host="wild.test")).status == 404  # the wildcard needs a label
    c.close()


async def test_only_an_app_without_hosts_takes_any_host(router: Router, apps: Callable[[str], App]) -> None:
    a, b = await apps("a").start(), await apps("b").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    # A single route with hosts is no catch-all: an attacker's Host never reaches the app.
    assert (await c.request(host="evil.attacker.test")).status == 404
    router.set_route("b", [], [b.upstream])  # an env without `route` asks for every other Host
    assert (await c.request(host="10.0.0.1:80")).body == b"b"
    assert (await c.request(host="a.test")).body == b"a"
    router.remove_route("b")
    router.remove_route("a")
    assert (await c.request(host="a.test")).status == 404  # nothing routed
    c.close()


async def test_no_upstream_is_503(router: Router) -> None:
    router.set_route("a", ["a.test"], [])
    c = await client(router)
    reply = await c.request()
    assert reply.status == 503
    assert (await c.request()).status == 503  # the connection stays usable
    c.close()


async def test_unreachable_upstream_is_502_and_get_retries_on_another(
    router: Router, apps: Callable[[str], App]
) -> None:
    dead = Upstream("127.0.0.1", free_port())
    router.set_route("a", ["a.test"], [dead])
    c = await client(router)
    assert (await c.request()).status == 502
    live = await apps("live").start()
    router.set_route("a", ["a.test"], [dead, live.upstream])
    for _ in range(4):  # whichever the round robin picks first, a GET lands on the live one
        assert (await c.request()).body == b"live"
    statuses = set()
    for _ in range(4):  # a request with a body is never replayed; its connection closes on a 502
        poster = await client(router)
        statuses.add((await poster.request("POST", "/echo", body=b"x")).status)
        poster.close()
    assert statuses == {200, 502}
    assert router.inflight(dead) == 0
    assert router.inflight(live.upstream) == 0
    c.close()


async def test_stale_pooled_connection_is_replayed_for_get(
    router: Router, apps: Callable[[str], App]
) -> None:
    a = apps("a")
    a.answer_once = True  # every connection answers once, then drops the next request
    await a.start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    for _ in range(5):
        assert (await c.request()).body == b"a"
    c.close()


# --- bodies and framing ---------------------------------------------------------------------------


async def test_chunked_both_ways_and_large_bodies(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    chunks = [bytes([65 + i % 26]) * (1000 + i) for i in range(40)]
    reply = await c.request("POST", "/chunked", chunks=chunks)
    assert reply.status == 200
    assert reply.body == b"".join(chunks)
    assert a.requests[-1][2] == b"".join(chunks)
    big = bytes(range(256)) * 8192  # 2 MiB, content-length both ways
    reply = await c.request("PUT", "/echo", body=big)
    assert reply.body == big
    assert reply.headers["content-length"] == str(len(big))
    c.close()


async def test_head_204_304_have_no_body_and_keep_alive(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    head = await c.request("HEAD", "/")
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "1")
    assert (await c.request("GET", "/204")).status == 204
    not_modified = await c.request("GET", "/304")
    assert (not_modified.status, not_modified.headers["etag"]) == (304, '"v1"')
    assert (await c.request()).body == b"a"
    assert a.connections == 1  # one pooled upstream connection served all of them
    c.close()


async def test_connection_close_either_side(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    reply = await c.request("GET", "/close")  # the upstream closes: the client connection stays
    assert reply.body == b"bye"
    assert "connection" not in reply.headers
    assert (await c.request()).body == b"a"
    reply = await c.request(headers=[("Connection", "close")])
    assert reply.headers["connection"] == "close"
    assert await c.closed_by_peer()
    c.close()


async def test_http10_clients(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", [], [a.upstream])
    raw = await raw_exchange(router.port, b"GET / HTTP/1.0\r\n\r\n")  # no Host: the catch-all app
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\na")
    # A chunked upstream answer reaches an HTTP/1.0 client delimited by close.
    raw = await raw_exchange(
        router.port,
        b"GET /chunked HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert b"transfer-encoding" not in raw.lower()
    assert raw.endswith(b"\r\n\r\nhello")
    # Keep-alive asked by a 1.0 client is honoured when the length is known.
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    for _ in range(2):
        writer.write(b"GET / HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        assert b"Connection: keep-alive" in head
        assert await asyncio.wait_for(reader.readexactly(1), IO_TIMEOUT) == b"a"
    writer.close()


async def test_idle_client_connections_are_closed(backend: str, apps: Callable[[str], App]) -> None:
    r = Router("127.0.0.1", 0, backend=backend, idle_timeout=0.3)
    await r.start()
    try:
        a = await apps("a").start()
        r.set_route("a", ["a.test"], [a.upstream])
        c = await Client(r.port).open()
        assert (await c.request()).body == b"a"
        trickle = await Client(r.port).open()
        assert trickle.writer is not None
        trickle.writer.write(b"GET / HTTP/1.1\r\nHost: a.")  # a head that never completes
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await c.closed_by_peer()
        assert await trickle.closed_by_peer()
        assert loop.time() - started < 3.0
        c.close()
        trickle.close()
    finally:
        await r.stop()


async def test_pipelined_requests_answered_in_order(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    assert c.writer is not None
    c.writer.write(
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nfirst"
        b"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n"
    )
    c.expect("GET", "/headers")
    assert b"x-forwarded-for" in (await c.response()).body
    c.expect("POST", "/echo")
    assert (await c.response()).body == b"first"
    c.expect("HEAD")
    assert (await c.response()).body == b""
    c.expect("POST", "/echo")
    assert (await c.response()).body == b"second"
    c.close()


async def test_trailers_never_become_request_headers(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    assert c.writer is not None
    c.writer.write(
        b"POST /headers HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: dropped\r\n\r\n"
    )  # head, body and trailer in one read
    c.expect("POST", "/headers")
    reply = await c.response()
    assert reply.status == 200
    assert "x-trailer" not in json.loads(reply.body)
    c.close()


async def test_expect_100_continue(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ping")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT) == b"ping"
    writer.close()


async def test_forwarded_headers(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    seen = json.loads((await c.request("GET", "/headers", host="a.test:8080")).body)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "a.test:8080"
    assert seen["host"] == "a.test:8080"
    # From a client that is no configured proxy (loopback or not) nothing forwarding gets through.
    forged = [
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Real-IP", "1.2.3.4"),
        ("X_Forwarded_For", "1.2.3.4"),
        ("x-real_ip", "1.2.3.4"),
    ]
    seen = json.loads((await c.request("GET", "/headers", headers=forged)).body)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert not {"forwarded", "x-real-ip", "x_forwarded_for", "x-real_ip"} & set(seen)
    c.close()


async def test_forwarded_headers_of_a_trusted_proxy(backend: str, apps: Callable[[str], App]) -> None:
    r = Router("127.0.0.1", 0, backend=backend, trusted_proxies=["127.0.0.1"])
    await r.start()
    try:
        a = await apps("a").start()
        r.set_route("a", ["a.test"], [a.upstream])
        c = await Client(r.port).open()
        seen = json.loads(
            (
                await c.request(
                    "GET",
                    "/headers",
                    headers=[
                        ("X-Forwarded-For", "203.0.113.9"),
                        ("X-Forwarded-Proto", "https"),
                        ("X-Real-IP", "203.0.113.9"),
                        ("X_Forwarded_For", "1.2.3.4"),
                    ],
                )
            ).body
        )
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"  # the chain kept and extended
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-real-ip"] == "203.0.113.9"
        assert "x_forwarded_for" not in seen  # underscore spellings never pass
        c.close()
    finally:
        await r.stop()


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
            400,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
    ids=["cl-and-te", "two-lengths", "gzip-te", "huge-head", "no-host", "garbage"],
)
async def test_ambiguous_or_malformed_requests_are_refused(
    router: Router, apps: Callable[[str], App], request_bytes: bytes, status: int
) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    raw = await raw_exchange(router.port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:80]
    assert b"Connection: close" in raw
    assert a.requests == []  # nothing reached the app


# --- upgrades -------------------------------------------------------------------------------------


async def test_upgrade_becomes_a_tunnel(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(
        b"GET /upgrade HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert await asyncio.wait_for(reader.readexactly(5), IO_TIMEOUT) == b"EARLY"
    assert router.inflight(a.upstream) == 1  # an open tunnel is in flight
    writer.write(b"raw bytes")
    assert await asyncio.wait_for(reader.readexactly(9), IO_TIMEOUT) == b"RAW BYTES"
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""
    writer.close()
    assert await router.drain(a.upstream, 2.0)


async def test_upgrade_declined_by_the_app_is_relayed(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    raw = await raw_exchange(
        router.port, b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in raw  # after an upgrade attempt the router does not parse on
    assert raw.endswith(b"\r\n\r\na")
    assert router.inflight(a.upstream) == 0


# --- broken upstreams -----------------------------------------------------------------------------


async def test_upstream_dying_mid_response_closes_the_client(
    router: Router, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    raw = await raw_exchange(router.port, b"GET /die HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\npartial")  # truncated, and the close tells the client so
    assert router.inflight(a.upstream) == 0


async def test_app_writing_in_pieces_with_nagle_is_not_slowed(
    router: Router, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    assert (await c.request("GET", "/split")).body == b"a"  # warm: pooled connection, Nagle now off
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        assert (await c.request("GET", "/split")).body == b"a"
    # Without the router's quick ACKs each answer would wait for Linux's delayed ACK (~40 ms).
    assert loop.time() - started < 0.4
    c.close()


async def test_client_writing_in_pieces_with_nagle_is_not_slowed(
    router: Router, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\n")
        await writer.drain()
        writer.write(b"body")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT) == b"body"
    assert loop.time() - started < 0.4
    writer.close()


async def test_garbage_from_upstream_is_502(router: Router, apps: Callable[[str], App]) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])
    c = await client(router)
    assert (await c.request("GET", "/garbage")).status == 502
    assert (await c.request()).body == b"a"  # the client connection carries on
    c.close()


# --- switching and draining -----------------------------------------------------------------------


async def test_keep_alive_connection_survives_a_switch(router: Router, apps: Callable[[str], App]) -> None:
    old, new = await apps("old").start(), await apps("new").start()
    router.set_route("a", ["a.test"], [old.upstream])
    c = await client(router)
    assert (await c.request()).body == b"old"
    router.set_route("a", ["a.test"], [new.upstream])
    assert (await c.request()).body == b"new"  # same client connection, next request, new upstream
    assert (await c.request()).body == b"new"
    c.close()


async def test_inflight_request_finishes_on_old_upstream_then_drain(
    router: Router, apps: Callable[[str], App]
) -> None:
    old, new = await apps("old").start(), await apps("new").start()
    router.set_route("a", ["a.test"], [old.upstream])
    slow_client = await client(router)
    slow = asyncio.create_task(slow_client.request("GET", "/slow"))
    await asyncio.wait_for(old.arrived.wait(), IO_TIMEOUT)
    assert router.inflight(old.upstream) == 1
    router.set_route("a", ["a.test"], [new.upstream])
    c = await client(router)
    assert (await c.request()).body == b"new"
    drain = asyncio.create_task(router.drain(old.upstream, 5.0))
    await asyncio.sleep(0.05)
    assert not drain.done()  # still waiting for the slow request
    old.gate.set()
    reply = await asyncio.wait_for(slow, IO_TIMEOUT)
    assert (reply.status, reply.body) == (200, b"old")
    assert await asyncio.wait_for(drain, IO_TIMEOUT) is True
    assert router.inflight(old.upstream) == 0
    slow_client.close()
    c.close()


async def test_drain_times_out(router: Router, apps: Callable[[str], App]) -> None:
    old, new = await apps("old").start(), await apps("new").start()
    router.set_route("a", ["a.test"], [old.upstream])
    c = await client(router)
    slow = asyncio.create_task(c.request("GET", "/slow"))
    await asyncio.wait_for(old.arrived.wait(), IO_TIMEOUT)
    router.set_route("a", ["a.test"], [new.upstream])
    assert await router.drain(old.upstream, 0.2) is False
    assert router.inflight(old.upstream) == 1
    old.gate.set()
    assert (await asyncio.wait_for(slow, IO_TIMEOUT)).body == b"old"
    assert await router.drain(old.upstream, 1.0) is True
    c.close()


async def test_keep_alive_load_across_switches_has_no_failures(
    router: Router, apps: Callable[[str], App]
) -> None:
    pool = [await apps(f"v{i}").start() for i in range(3)]
    router.set_route("a", ["a.test"], [pool[0].upstream])
    counts = {"ok": 0, "failed": 0}

    async def load(requests: int) -> None:
        c = await client(router)
        for i in range(requests):
            echo = i % 3 == 0
            try:
                reply = await (c.request("POST", "/echo", body=b"%d" % i) if echo else c.request())
                ok = reply.status == 200 and (reply.body == b"%d" % i if echo else reply.body[:1] == b"v")
            except (ConnectionError, h11.ProtocolError, TimeoutError):
                ok = False
            counts["ok" if ok else "failed"] += 1
        c.close()

    async def switch(times: int) -> None:
        for n in range(times):
            await asyncio.sleep(0.01)
            previous = pool[n % 3].upstream
            router.set_route("a", ["a.test"], [pool[(n + 1) % 3].upstream, pool[(n + 2) % 3].upstream])
            await router.drain(previous, 1.0)

    await asyncio.gather(*(load(300) for _ in range(4)), switch(20))
    assert counts == {"ok": 1200, "failed": 0}
    assert all(router.inflight(app.upstream) == 0 for app in pool)


# --- fuzzed input ---------------------------------------------------------------------------------

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /headers HTTP/1.1\r\nHost: a.test\r\n\r\n",
]
TOKENS = [
    b"\r\n",
    b"\n",
    b":",
    b" ",
    b"\x00",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"ffffffffffffffffff\r\n",
    b"-1",
    b"HTTP/1.1",
    b"\r\n\r\n",
    b"Host: b\r\n",
    b"\xff",
]


def _mutations(count: int) -> list[bytes]:
    rng = random.Random(4)  # fixed: the same cases on every run
    cases = []
    for _ in range(count):
        data = bytearray(rng.choice(SEEDS))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            action = rng.randrange(4)
            if action == 0:
                del data[at : at + rng.randint(1, 8)]
            elif action == 1:
                data[at:at] = rng.choice(TOKENS)
            elif action == 2 and at < len(data):
                data[at] = rng.randrange(256)
            else:
                data = data[:at]
        cases.append(bytes(data))
    return cases


async def test_fuzzed_requests_never_hurt_the_router(
    router: Router, apps: Callable[[str], App], caplog: pytest.LogCaptureFixture
) -> None:
    a = await apps("a").start()
    router.set_route("a", ["a.test"], [a.upstream])

    async def send(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(data)
        writer.write_eof()  # a truncated request must end in an answer or a close, not a wait
        try:
            return await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)
        finally:
            writer.close()

    for case in _mutations(150):
        answer = await send(case)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), (case, answer[:60])
    c = await client(router)
    assert (await c.request()).body == b"a"  # still serving
    c.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert router.inflight(a.upstream) == 0
