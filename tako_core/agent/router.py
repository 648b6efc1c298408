"""The agent's HTTP/1.1 router: Host-based routing to app instances, switched atomically during a rollout.

Each client connection is served by one task that handles its requests in order (pipelining falls out
of that): parse a request head, pick an upstream of the matching route (round robin, chosen per
request, so the request after a `set_route` goes to the new instances even on the same keep-alive
connection), forward the request over a pooled keep-alive upstream connection, stream the response
back. Bodies are streamed in both directions and re-framed (Content-Length passes through, chunked is
decoded and re-encoded), so nothing is ever buffered whole.

Choices worth knowing:
- A route's upstreams are used round robin. Connecting fails → 502, except that a request without a
  body and with an idempotent method is tried once more on the route's next upstream; a pooled
  connection the app closed before answering is replayed the same way on a fresh one.
- `Expect: 100-continue` is answered by the router itself once it has an upstream to send the body to.
- Client connections idle between requests (or trickling a head) for IDLE_TIMEOUT are closed, by one
  sweeper task rather than a timer per request.
- While a message is incomplete the router asks Linux for an immediate ACK (TCP_QUICKACK): peers that
  write a head and a body apart with Nagle on would otherwise wait ~40 ms for the delayed ACK.
- Request smuggling: Content-Length with Transfer-Encoding, conflicting lengths, or a
  Transfer-Encoding other than `chunked` are refused (400/501) and the connection is closed.
- Upgrades (WebSocket and the like) become a raw byte tunnel after the upstream's 101; the tunnel
  counts as in flight until either side closes. CONNECT is refused (501): this is not a forward proxy.
- X-Forwarded-For/-Proto/-Host: a loopback peer (a local TLS terminator such as Caddy) is trusted and
  its values are kept (the peer is appended to X-Forwarded-For); from anyone else they are replaced.
- The request body is sent completely before the response is read: an upstream that answers early and
  stops reading a large body stalls that one request, never the router.
- Trailers of chunked messages are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

from tako_core.agent.http1 import (
    DATA,
    END,
    HEAD,
    INFO,
    UPGRADE,
    Event,
    Head,
    ParseError,
    RequestParser,
    select_backend,
)

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024  # bytes of request line + headers a client may send
IDLE_TIMEOUT = 75.0  # seconds a client connection may wait between requests (or trickle a head)
CONNECT_TIMEOUT = 5.0  # seconds to open a connection to an upstream
_HIGH_WATER = 256 * 1024  # unread bytes buffered per connection before reading pauses
_MAX_IDLE = 256  # pooled idle connections kept per upstream

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

# How the response body is framed towards the client.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int


class _Conn(asyncio.Protocol):
    """A lean byte stream over one socket: a read hands the bytes straight to the waiting task, writes
    honour the transport's flow control. Used for both client and upstream connections."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self.lost = False
        self._reader: asyncio.Future[bytes] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        r = self._reader
        if r is not None:
            self._reader = None
            if not r.done():
                r.set_result(data)
                return
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the write side open: a half-closed client still gets its response

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.lost = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        r, self._reader = self._reader, None
        if r is not None and not r.done():
            r.set_result(b"")

    def _wake_writer(self) -> None:
        w, self._writable = self._writable, None
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self) -> bytes:
        """The next bytes received; b"" once the peer closed."""
        buf = self._buf
        if buf:
            data = buf[0] if len(buf) == 1 else b"".join(buf)
            buf.clear()
            self._buffered = 0
            if self._read_paused and self.transport is not None:
                self._read_paused = False
                self.transport.resume_reading()
            return data
        if self._eof:
            return b""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._reader = fut
        return await fut

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("peer closed the connection")
        if self._write_paused:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._writable = fut
            await fut
            if self.lost:
                raise ConnectionResetError("peer closed the connection")

    def write_eof(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()

    def quickack(self) -> None:
        """Acknowledge the next segment at once. An app that writes a response in two pieces without
        TCP_NODELAY holds the second until the first is acknowledged, and Linux delays that ACK by
        up to 40 ms: asked only while a response is incomplete, so a one-piece answer costs nothing."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def reusable(self) -> bool:
        """An idle pooled connection is reusable when the upstream neither closed it nor sent bytes."""
        t = self.transport
        return not self._eof and not self._buf and t is not None and not t.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _ClientConn(_Conn):
    def __init__(self, router: Router) -> None:
        super().__init__()
        self._router = router
        # When the connection started waiting for its next request head; None while one is served.
        self.idle_since: float | None = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._router._accept(self)


class _UpstreamState:
    """Per-upstream bookkeeping: in-flight count, drain waiters, idle pooled connections."""

    __slots__ = ("authority", "drained", "idle", "inflight", "routed", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.authority = f"{upstream.host}:{upstream.port}".encode()
        self.inflight = 0
        self.routed = False
        self.drained: asyncio.Event | None = None
        self.idle: list[_Conn] = []

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class _Route:
    __slots__ = ("hosts", "key", "next", "upstreams")

    def __init__(self, key: str, hosts: tuple[bytes, ...], upstreams: tuple[_UpstreamState, ...]) -> None:
        self.key = key
        self.hosts = hosts
        self.upstreams = upstreams
        self.next = 0

    def pick(self) -> _UpstreamState | None:
        ups = self.upstreams
        if not ups:
            return None
        i = self.next
        self.next = i + 1
        return ups[i % len(ups)]


class _Requests:
    """The client's request events, parsed on demand (pipelined requests wait here in order)."""

    __slots__ = ("conn", "events", "parser", "pos")

    def __init__(self, conn: _Conn, parser: RequestParser) -> None:
        self.conn = conn
        self.parser = parser
        self.events = parser.events
        self.pos = 0

    def ready(self) -> bool:
        return self.pos < len(self.events)

    async def next(self) -> Event | None:
        """The next event; None when the client closed between requests."""
        events = self.events
        while self.pos >= len(events):
            events.clear()
            self.pos = 0
            data = await self.conn.read()
            if data:
                self.parser.feed(data)
            else:
                self.parser.feed_eof()
                if not events:
                    return None
        ev = events[self.pos]
        self.pos += 1
        return ev


class _ConnectFailed(Exception):
    pass


class _Stale(Exception):
    """A reused pooled connection closed before answering: the request may be replayed."""


class _UpstreamFailed(Exception):
    def __init__(self, started: bool, message: str, body_unread: bool = False) -> None:
        super().__init__(message)
        self.started = started  # bytes of the response already reached the client
        self.body_unread = body_unread  # part of the request body is still on the client connection


def _host_key(host: bytes) -> bytes:
    """Host header → lookup key: lower case, port and trailing dot stripped ([v6] literals kept)."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.partition(b":")[0].rstrip(b".")


def _route_name(host: str) -> bytes:
    """A configured route host → lookup key; `*.example.com` keeps its wildcard label."""
    host = host.strip().lower()
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    encoded = name.encode() if name.isascii() else name.encode("idna")
    return b"*." + _host_key(encoded) if wildcard else _host_key(encoded)


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


class Router:
    """HTTP/1.1 reverse proxy routing by Host to the upstreams given by `set_route`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        backend: str | None = None,
        max_head: int = MAX_HEAD,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._host = host
        self._port = port
        self._backend = select_backend(backend)
        self._max_head = max_head
        self._idle_timeout = idle_timeout
        self._clients: set[_ClientConn] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._routes: dict[str, _Route] = {}
        self._exact: dict[bytes, _Route] = {}
        self._wild: list[tuple[bytes, _Route]] = []  # (".example.com", route), longest suffix first
        self._only: _Route | None = None
        self._cache: dict[bytes, _Route | None] = {}
        self._states: dict[Upstream, _UpstreamState] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def backend(self) -> str:
        """The HTTP parser in use: "httptools" or "h11"."""
        return self._backend.name

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._closing = False
        self._server = await loop.create_server(
            lambda: _ClientConn(self), self._host, self._port, reuse_address=True, backlog=1024
        )
        self._sweeper = loop.create_task(self._sweep_idle())

    async def stop(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():
            state.close_idle()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # --- routes (synchronous, so each change is atomic for the event loop) -------------------------

    def set_route(self, key: str, hosts: Sequence[str], upstreams: Sequence[Upstream]) -> None:
        """Route `hosts` (exact names or `*.example.com`) to `upstreams`, replacing the route `key`.
        Requests already forwarded finish where they are; every later request uses the new upstreams."""
        names = tuple(_route_name(h) for h in hosts)
        states = tuple(self._state(u) for u in dict.fromkeys(upstreams))
        routes = dict(self._routes)
        routes[key] = _Route(key, names, states)
        self._install(routes)

    def remove_route(self, key: str) -> None:
        routes = dict(self._routes)
        if routes.pop(key, None) is not None:
            self._install(routes)

    def inflight(self, upstream: Upstream) -> int:
        state = self._states.get(upstream)
        return state.inflight if state is not None else 0

    async def drain(self, upstream: Upstream, timeout: float) -> bool:  # noqa: ASYNC109 - the contract
        """Wait until no request is being proxied to `upstream` (True) or `timeout` passed (False);
        then close its idle pooled connections."""
        state = self._states.get(upstream)
        if state is None:
            return True
        done = True
        if state.inflight:
            if state.drained is None:
                state.drained = asyncio.Event()
            try:
                await asyncio.wait_for(state.drained.wait(), timeout)
            except asyncio.TimeoutError:  # noqa: UP041 - not the builtin before Python 3.11
                done = False
        state.close_idle()
        return done

    def _state(self, upstream: Upstream) -> _UpstreamState:
        state = self._states.get(upstream)
        if state is None:
            state = self._states[upstream] = _UpstreamState(upstream)
        return state

    def _install(self, routes: dict[str, _Route]) -> None:
        exact: dict[bytes, _Route] = {}
        wild: list[tuple[bytes, _Route]] = []
        routed: set[_UpstreamState] = set()
        for route in routes.values():
            routed.update(route.upstreams)
            for name in route.hosts:
                if name.startswith(b"*."):
                    wild.append((name[1:], route))
                else:
                    exact.setdefault(name, route)
        wild.sort(key=lambda item: -len(item[0]))
        self._routes = routes
        self._exact = exact
        self._wild = wild
        self._only = next(iter(routes.values())) if len(routes) == 1 else None
        self._cache = {}
        for upstream, state in list(self._states.items()):
            state.routed = state in routed
            if not state.routed:
                state.close_idle()  # no new request goes there; in-flight ones close theirs when done
                if state.inflight == 0 and state.drained is None:
                    del self._states[upstream]

    def _lookup(self, host: bytes | None) -> _Route | None:
        if host is None:
            return self._only
        cache = self._cache
        if host in cache:
            return cache[host]
        name = _host_key(host)
        route = self._exact.get(name)
        if route is None:
            for suffix, candidate in self._wild:
                if name.endswith(suffix) and len(name) > len(suffix):
                    route = candidate
                    break
            else:
                route = self._only
        if len(cache) >= 4096:  # Host values are client-chosen: keep the memo bounded
            cache.clear()
        cache[host] = route
        return route

    def _begin(self, state: _UpstreamState) -> None:
        state.inflight += 1

    def _end(self, state: _UpstreamState) -> None:
        state.inflight -= 1
        if state.inflight == 0:
            event, state.drained = state.drained, None
            if event is not None:
                event.set()
            if not state.routed and self._states.get(state.upstream) is state:
                state.close_idle()
                del self._states[state.upstream]

    # --- serving ------------------------------------------------------------------------------------

    async def _sweep_idle(self) -> None:
        """Close client connections idle past the timeout: one timer for all, none per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self._idle_timeout / 4))
            cutoff = loop.time() - self._idle_timeout
            for conn in list(self._clients):
                if conn.idle_since is not None and conn.idle_since < cutoff:
                    conn.close()

    def _accept(self, conn: _ClientConn) -> None:
        self._clients.add(conn)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client: _ClientConn) -> None:
        reqs = _Requests(client, self._backend.request_parser(self._max_head))
        head: Head | None = None
        try:
            peername = client.transport.get_extra_info("peername") if client.transport else None
            peer = str(peername[0]) if peername else "unknown"
            trusted = peer.startswith("127.") or peer == "::1"
            peer_bytes = peer.encode()
            loop = asyncio.get_running_loop()
            while True:
                head = None
                client.idle_since = loop.time()
                ev = await reqs.next()
                client.idle_since = None
                if ev is None or ev[0] != HEAD:
                    return
                head = ev[1]
                if not await self._exchange(client, reqs, head, peer_bytes, trusted):
                    return
        except ParseError as e:
            self._reply(client, head, e.status, str(e), keep=False)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug must cost one connection, never the router
            log.exception("router: unexpected error serving a client")
        finally:
            self._clients.discard(client)
            client.close()

    def _reply(self, client: _Conn, req: Head | None, status: int, text: str, keep: bool) -> None:
        """A short plain-text answer from the router itself."""
        body = f"{text}\n".encode()
        if not keep:
            conn = b"Connection: close\r\n"
        else:
            conn = b"" if req is not None and req.minor == 1 else b"Connection: keep-alive\r\n"
        if req is not None and req.method == b"HEAD":
            body, length = b"", len(body)
        else:
            length = len(body)
        client.write(
            b"%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n%s"
            % (_status_line(status), length, conn, body)
        )

    async def _refuse(self, client: _Conn, reqs: _Requests, req: Head, status: int, text: str) -> bool:
        # An unread body would be taken for the next request: close instead of reading it.
        keep = req.keep_alive and not (req.chunked or req.content_length)
        if keep:
            await reqs.next()  # the END of a bodyless request
        self._reply(client, req, status, text, keep)
        return keep

    async def _exchange(self, client: _Conn, reqs: _Requests, req: Head, peer: bytes, trusted: bool) -> bool:
        """Proxy one request; True when the client connection stays open for the next one."""
        if req.method == b"CONNECT":
            raise ParseError(501, "CONNECT is not supported")
        route = self._lookup(req.host)
        if route is None:
            return await self._refuse(client, reqs, req, 404, "no app is routed for this host")
        has_body = req.chunked or bool(req.content_length)
        if req.upgrade:
            if has_body:
                raise ParseError(501, "an upgrade request with a body is not supported")
            return await self._tunnel(client, reqs, req, route, peer, trusted)
        state = route.pick()
        if state is None:
            return await self._refuse(client, reqs, req, 503, "no instance of this app is ready")
        if not has_body:
            if reqs.ready():  # the request's END, parsed along with its head (always, in practice)
                reqs.pos += 1
            else:
                await reqs.next()
        replayable = req.method in _IDEMPOTENT and not has_body
        for attempt in (0, 1):
            current = state
            self._begin(current)
            try:
                xhead = self._request_head(req, peer, trusted, current, False)
                return await self._forward(
                    client, reqs, req, xhead, current, has_body, replayable and attempt == 0
                )
            except _Stale:
                current.close_idle()  # its siblings are likely stale too (e.g. the app restarted)
                continue  # same upstream, fresh connection
            except _ConnectFailed:
                other = route.pick() if replayable and attempt == 0 else None
                if other is not None and other is not current:
                    state = other
                    continue
                keep = req.keep_alive and not has_body  # an unread body would be taken for a request
                self._reply(client, req, 502, "the app's instance is not reachable", keep)
                return keep
            except _UpstreamFailed as e:
                if e.started:
                    return False  # the client has part of a response: only closing tells it
                log.warning("router: upstream %s failed: %s", current.upstream, e)
                keep = req.keep_alive and not e.body_unread
                self._reply(client, req, 502, "the app's instance failed to answer", keep)
                return keep
            finally:
                self._end(current)
        return False  # pragma: no cover - the loop always returns

    @staticmethod
    def _pooled(state: _UpstreamState) -> _Conn | None:
        """An idle pooled connection that is still good, if any (synchronous: the hot path)."""
        idle = state.idle
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        return None

    async def _connect(self, state: _UpstreamState) -> _Conn:
        loop = asyncio.get_running_loop()
        up = state.upstream
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Conn, up.host, up.port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:  # noqa: UP041 - not the builtin before 3.11
            log.warning("router: cannot connect to %s:%s: %s", up.host, up.port, e)
            raise _ConnectFailed from None
        return conn

    def _checkin(self, state: _UpstreamState, conn: _Conn, clean: bool) -> None:
        if clean and state.routed and not self._closing and len(state.idle) < _MAX_IDLE and conn.reusable():
            state.idle.append(conn)
        else:
            conn.close()

    async def _forward(
        self,
        client: _Conn,
        reqs: _Requests,
        req: Head,
        xhead: bytes,
        state: _UpstreamState,
        has_body: bool,
        may_retry: bool,
    ) -> bool:
        up = self._pooled(state)
        reused = up is not None
        if up is None:
            up = await self._connect(state)
        clean = False
        try:
            if has_body:
                if req.expect_continue and req.minor == 1:
                    client.write(_CONTINUE)
                try:
                    await self._send_body(reqs, up, xhead, req.chunked)
                except ConnectionError:  # only the upstream is written to while sending the body
                    raise _UpstreamFailed(False, "upstream closed while receiving the body", True) from None
            else:
                up.write(xhead)
            keep, clean, _ = await self._relay(client, up, req, may_retry and reused, False)
            return keep
        finally:
            self._checkin(state, up, clean)

    def _request_head(
        self, req: Head, peer: bytes, trusted: bool, state: _UpstreamState, upgrade: bool
    ) -> bytes:
        lines = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
        drop = _HOP_BY_HOP | req.conn_tokens if req.conn_tokens else _HOP_BY_HOP
        xff = b""
        forwarded_proto = forwarded_host = False
        for name, value in req.headers:
            n = name.lower()
            if n in drop:
                if upgrade and n == b"upgrade":
                    lines += (name, b": ", value, b"\r\n")
                continue
            if n == b"expect":
                continue  # answered by the router
            if n.startswith(b"x-forwarded-"):
                if not trusted:
                    continue
                if n == b"x-forwarded-for":
                    xff = value + b", " if not xff else xff + value + b", "
                    continue
                forwarded_proto = forwarded_proto or n == b"x-forwarded-proto"
                forwarded_host = forwarded_host or n == b"x-forwarded-host"
            lines += (name, b": ", value, b"\r\n")
        if req.host is None:
            lines += (b"Host: ", state.authority, b"\r\n")
        lines += (b"X-Forwarded-For: ", xff, peer, b"\r\n")
        if not forwarded_proto:
            lines.append(b"X-Forwarded-Proto: http\r\n")
        if not forwarded_host and req.host is not None:
            lines += (b"X-Forwarded-Host: ", req.host, b"\r\n")
        if upgrade:
            lines.append(b"Connection: upgrade\r\n")
        elif req.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _send_body(self, reqs: _Requests, up: _Conn, xhead: bytes, chunked: bool) -> None:
        out = [xhead]
        while True:
            if not reqs.ready():
                up.write(b"".join(out))
                out = []
                await up.drain()
                reqs.conn.quickack()  # a client sending head and body apart waits for this ACK
            ev = await reqs.next()
            if ev is None:
                raise ParseError(400, "connection closed inside a request body")
            kind, data = ev
            if kind == DATA:
                if chunked:
                    out += (b"%x\r\n" % len(data), data, b"\r\n")
                else:
                    out.append(data)
            elif kind == END:
                if chunked:
                    out.append(b"0\r\n\r\n")
                up.write(b"".join(out))
                return

    def _response_head(self, resp: Head, req: Head, keep: bool) -> tuple[bytes, int, bool]:
        """The head the client gets, its body framing, and whether the client connection stays open."""
        status = resp.status
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, resp.reason)]
        if status == 101:
            lines += [b"%s: %s\r\n" % header for header in resp.headers]
            lines.append(b"\r\n")
            return b"".join(lines), _NO_BODY, False
        drop = _HOP_BY_HOP | resp.conn_tokens if resp.conn_tokens else _HOP_BY_HOP
        for name, value in resp.headers:
            if name.lower() not in drop:
                lines += (name, b": ", value, b"\r\n")
        if req.method == b"HEAD" or status in (204, 304) or status < 200:
            mode = _NO_BODY
        elif resp.content_length is not None:
            mode = _LENGTH
        elif req.minor == 1:
            mode = _CHUNKED
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            mode = _UNTIL_CLOSE  # an HTTP/1.0 client knows no chunked: the body ends at close
            keep = False
        if not keep:
            lines.append(b"Connection: close\r\n")
        elif req.minor == 0:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines), mode, keep

    async def _relay(
        self, client: _Conn, up: _Conn, req: Head, may_retry: bool, upgrade: bool
    ) -> tuple[bool, bool, bytes | None]:
        """Stream the upstream's response to the client. Returns (client keep-alive, upstream connection
        reusable, bytes after a 101 or None)."""
        parser = self._backend.response_parser(req.method, upgrade, self._max_head)
        events = parser.events
        keep = req.keep_alive and not upgrade  # after an upgrade attempt the router stops parsing
        mode = _NO_BODY
        resp: Head | None = None
        started = got = False
        while True:
            data = await up.read()
            try:
                if data:
                    got = True
                    parser.feed(data)
                elif not got and may_retry:
                    raise _Stale
                else:
                    parser.feed_eof()
            except ParseError as e:
                raise _UpstreamFailed(started, str(e)) from None
            out: list[bytes] = []
            done = False
            switched: bytes | None = None
            for kind, value in events:
                if kind == DATA:
                    if mode == _CHUNKED:
                        out += (b"%x\r\n" % len(value), value, b"\r\n")
                    else:
                        out.append(value)
                elif kind == HEAD:
                    resp = value
                    head, mode, keep = self._response_head(value, req, keep)
                    out.append(head)
                elif kind == END:
                    if mode == _CHUNKED:
                        out.append(b"0\r\n\r\n")
                    done = True
                elif kind == INFO:
                    if req.minor == 1 and value.status != 100:  # 100 was the router's to send
                        out.append(self._response_head(value, req, True)[0])
                elif kind == UPGRADE:
                    switched = value
            events.clear()
            if out:
                client.write(b"".join(out))
                started = True
            if switched is not None:
                return False, False, switched
            if done:
                assert resp is not None
                reusable = resp.keep_alive and (
                    mode == _NO_BODY or resp.content_length is not None or resp.chunked
                )
                return keep, reusable, None
            if not data:
                raise _UpstreamFailed(started, "upstream closed the connection inside a response")
            up.quickack()
            await client.drain()

    async def _tunnel(
        self, client: _Conn, reqs: _Requests, req: Head, route: _Route, peer: bytes, trusted: bool
    ) -> bool:
        """An upgrade: forward the handshake, and after the upstream's 101 splice the two sockets."""
        await reqs.next()  # END
        ev = await reqs.next()
        early = ev[1] if ev is not None and ev[0] == UPGRADE else b""
        state = route.pick()
        if state is None:
            self._reply(client, req, 503, "no instance of this app is ready", False)
            return False
        self._begin(state)
        try:
            try:
                up = self._pooled(state) or await self._connect(state)
            except _ConnectFailed:
                self._reply(client, req, 502, "the app's instance is not reachable", False)
                return False
            try:
                up.write(self._request_head(req, peer, trusted, state, True))
                _, _, switched = await self._relay(client, up, req, False, True)
                if switched is not None:
                    client.write(switched)
                    up.write(early)
                    await asyncio.gather(_pump(client, up), _pump(up, client))
            except _UpstreamFailed as e:
                if not e.started:
                    self._reply(client, req, 502, "the app's instance failed to answer", False)
            finally:
                up.close()
            return False  # after an upgrade attempt the connection is no longer HTTP/1.1 we parse
        finally:
            self._end(state)


async def _pump(src: _Conn, dst: _Conn) -> None:
    """Copy bytes one way until the source closes, then half-close the destination."""
    try:
        while True:
            data = await src.read()
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        dst.write_eof()
