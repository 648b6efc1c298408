"""One proxied exchange: a client's request forwarded to an upstream, and its response streamed back.

Bodies are streamed in both directions and re-framed (Content-Length passes through, chunked is decoded
and re-encoded), so nothing is ever buffered whole. The request body is sent completely before the
response is read: an upstream that answers early and stops reading a large body stalls that one
request, never the router. An upgrade becomes a raw byte tunnel after the upstream's 101. The heads
are rewritten on the way (`heads`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tako_core.agent.heads import (
    CONTINUE,
    BodyFraming,
    answer,
    interim_head,
    reply,
    request_head,
    response_head,
    switch_head,
)
from tako_core.agent.http1 import (
    Backend,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    ParseError,
    Parser,
    Request,
    Response,
    Upgraded,
)
from tako_core.agent.route_table import Route, RouteTable, UpstreamState
from tako_core.agent.stream import Stream
from tako_core.agent.upstream_pool import ConnectFailed

log = logging.getLogger("tako.agent")

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_NO_BODY, _CHUNKED = BodyFraming.NONE, BodyFraming.CHUNKED  # globals: cheaper than enum lookups per chunk


class ClientConnection:
    """One client connection: its stream, its requests parsed on demand and in order (pipelined ones
    wait here), and who is at the other end."""

    __slots__ = ("body_since", "events", "parser", "peer", "pos", "stream", "tls", "trusted", "waiting_since")

    def __init__(
        self, stream: Stream, parser: Parser, peer: str, trusted: bool, *, tls: bool = False
    ) -> None:
        self.stream = stream
        self.parser = parser
        self.events = parser.events
        self.pos = 0
        self.peer = peer.encode()
        self.trusted = trusted  # a configured proxy: its forwarding headers are kept
        self.tls = tls  # the client came over the HTTPS listener
        # For the router's deadlines: when the body being read began, and when the router began
        # waiting for more of it (None: not reading a body, not waiting).
        self.body_since: float | None = None
        self.waiting_since: float | None = None

    def ready(self) -> bool:
        """Whether the next event is parsed already."""
        return self.pos < len(self.events)

    def skip(self) -> bool:
        """Consume the next event if it is parsed already (the caller knows what it is)."""
        if self.pos < len(self.events):
            self.pos += 1
            return True
        return False

    async def next(self) -> Event | None:
        """The next event; None when the client closed between requests."""
        events = self.events
        while self.pos >= len(events):
            events.clear()
            self.pos = 0
            data = await self.stream.read()
            if data:
                self.parser.feed(data)
            else:
                self.parser.feed_eof()
                if not events:
                    return None
        ev = events[self.pos]
        self.pos += 1
        return ev

    def reply(self, req: Request | None, status: int, text: str, *, keep: bool) -> None:
        """A short plain-text answer from the router itself."""
        self.stream.write(reply(req, status, text, keep=keep))


class _Stale(Exception):
    """A reused pooled connection closed before answering: the request may be replayed."""


class _UpstreamFailed(Exception):
    def __init__(self, message: str, *, started: bool, body_unread: bool = False) -> None:
        super().__init__(message)
        self.started = started  # bytes of the response already reached the client
        self.body_unread = body_unread  # part of the request body is still on the client connection


class Proxy:
    """Proxies requests to the upstreams the table chooses, parsing responses with `backend`."""

    def __init__(self, table: RouteTable, backend: Backend, max_head: int) -> None:
        self._table = table
        self._backend = backend
        self._max_head = max_head

    async def exchange(self, client: ClientConnection, req: Request) -> bool:
        """Proxy one request; True when the client connection stays open for the next one."""
        if req.method == b"CONNECT":
            raise ParseError(501, "CONNECT is not supported")  # not a forward proxy
        route = self._table.lookup(req.host)
        if route is None:
            return await self.refuse(client, req, 404, "no app is routed for this host")
        has_body = req.chunked or bool(req.content_length)
        if req.upgrade:
            if has_body:
                raise ParseError(501, "an upgrade request with a body is not supported")
            return await self._tunnel(client, req, route)
        state = route.pick()
        if state is None:
            return await self.refuse(client, req, 503, "no instance of this app is ready")
        if not has_body and not client.skip():  # the request's END, parsed along with its head in practice
            await client.next()
        replayable = req.method in _IDEMPOTENT and not has_body
        for attempt in (0, 1):
            current = state
            self._table.begin(current)
            try:
                return await self._forward(
                    client, req, current, has_body=has_body, may_retry=replayable and attempt == 0
                )
            except _Stale:
                current.pool.close_idle()  # its siblings are likely stale too (e.g. the app restarted)
                continue  # same upstream, fresh connection
            except ConnectFailed:
                other = route.pick() if replayable and attempt == 0 else None
                if other is not None and other is not current:
                    state = other
                    continue
                keep = req.keep_alive and not has_body  # an unread body would be taken for a request
                client.reply(req, 502, "the app's instance is not reachable", keep=keep)
                return keep
            except _UpstreamFailed as e:
                if e.started:
                    return False  # the client has part of a response: only closing tells it
                log.warning("router: upstream %s failed: %s", current.upstream, e)
                keep = req.keep_alive and not e.body_unread
                client.reply(req, 502, "the app's instance failed to answer", keep=keep)
                return keep
            finally:
                self._table.end(current)
        return False  # pragma: no cover - the loop always returns

    @staticmethod
    async def refuse(
        client: ClientConnection,
        req: Request,
        status: int,
        text: str,
        *,
        body: bytes | None = None,
        headers: bytes = b"",
    ) -> bool:
        """Answer `req` without an upstream (`text`, or `body` as is); True when the connection stays open."""
        # An unread body would be taken for the next request: close instead of reading it.
        keep = req.keep_alive and not (req.chunked or req.content_length)
        if keep:
            await client.next()  # the END of a bodyless request
        client.stream.write(
            answer(req, status, f"{text}\n".encode() if body is None else body, keep=keep, headers=headers)
        )
        return keep

    async def _forward(
        self, client: ClientConnection, req: Request, state: UpstreamState, *, has_body: bool, may_retry: bool
    ) -> bool:
        pool = state.pool
        up = pool.checkout()
        reused = up is not None
        if up is None:
            up = await pool.connect()
        clean = False
        try:
            head = request_head(
                req, peer=client.peer, trusted=client.trusted, authority=state.authority, tls=client.tls
            )
            if has_body:
                if req.expect_continue and req.minor == 1:
                    client.stream.write(CONTINUE)  # the router has an upstream to send the body to
                try:
                    await self._send_body(client, up, head, chunked=req.chunked)
                except ConnectionError:  # only the upstream is written to while sending the body
                    raise _UpstreamFailed(
                        "upstream closed while receiving the body", started=False, body_unread=True
                    ) from None
            else:
                up.write(head)
            keep, clean, _ = await self._relay(client, up, req, may_retry=may_retry and reused)
            return keep
        finally:
            pool.checkin(up, reuse=clean and state.routed)

    @staticmethod
    async def _send_body(client: ClientConnection, up: Stream, head: bytes, *, chunked: bool) -> None:
        clock = asyncio.get_running_loop().time
        client.body_since = clock()
        try:
            await Proxy._pass_body(client, up, head, chunked, clock)
        finally:
            client.body_since = client.waiting_since = None

    @staticmethod
    async def _pass_body(
        client: ClientConnection, up: Stream, head: bytes, chunked: bool, clock: Callable[[], float]
    ) -> None:
        out = [head]
        while True:
            if not client.ready():
                up.write(b"".join(out))
                out = []
                await up.drain()
                client.stream.quickack()  # a client sending head and body apart waits for this ACK
                client.waiting_since = clock()
            ev = await client.next()
            client.waiting_since = None
            if ev is None:
                raise ParseError(400, "connection closed inside a request body")
            if isinstance(ev, Data):
                if chunked:
                    out += (b"%x\r\n" % len(ev.data), ev.data, b"\r\n")
                else:
                    out.append(ev.data)
            elif isinstance(ev, EndOfMessage):
                if chunked:
                    out.append(b"0\r\n\r\n")
                up.write(b"".join(out))
                return

    async def _relay(
        self, client: ClientConnection, up: Stream, req: Request, *, may_retry: bool
    ) -> tuple[bool, bool, bytes | None]:
        """Stream the upstream's response to the client. Returns (client keep-alive, upstream connection
        reusable, bytes after a 101 or None)."""
        parser = self._backend.response_parser(req, self._max_head)
        events = parser.events
        keep = req.keep_alive and not req.upgrade  # after an upgrade attempt the router stops parsing
        framing = _NO_BODY
        resp: Response | None = None
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
                raise _UpstreamFailed(str(e), started=started) from None
            out: list[bytes] = []
            done = False
            switched: bytes | None = None
            for ev in events:
                if isinstance(ev, Data):
                    if framing is _CHUNKED:
                        out += (b"%x\r\n" % len(ev.data), ev.data, b"\r\n")
                    else:
                        out.append(ev.data)
                elif isinstance(ev, Response):
                    resp = ev
                    head, framing, keep = response_head(ev, req, keep=keep)
                    out.append(head)
                elif isinstance(ev, EndOfMessage):
                    if framing is _CHUNKED:
                        out.append(b"0\r\n\r\n")
                    done = True
                elif isinstance(ev, InformationalResponse):
                    if ev.status == 101:
                        out.append(switch_head(ev))
                    elif req.minor == 1 and ev.status != 100:  # 100 was the router's to send
                        out.append(interim_head(ev))
                elif isinstance(ev, Upgraded):
                    switched = ev.rest
            events.clear()
            if out:
                client.stream.write(b"".join(out))
                started = True
            if switched is not None:
                return False, False, switched
            if done:
                assert resp is not None
                reusable = resp.keep_alive and (
                    framing is _NO_BODY or resp.content_length is not None or resp.chunked
                )
                return keep, reusable, None
            if not data:
                raise _UpstreamFailed("upstream closed the connection inside a response", started=started)
            up.quickack()
            await client.stream.drain()

    async def _tunnel(self, client: ClientConnection, req: Request, route: Route) -> bool:
        """An upgrade: forward the handshake, and after the upstream's 101 splice the two sockets. The
        tunnel counts as in flight until either side closes."""
        await client.next()  # END
        ev = await client.next()
        early = ev.rest if isinstance(ev, Upgraded) else b""
        state = route.pick()
        if state is None:
            client.reply(req, 503, "no instance of this app is ready", keep=False)
            return False
        self._table.begin(state)
        try:
            try:
                up = state.pool.checkout() or await state.pool.connect()
            except ConnectFailed:
                client.reply(req, 502, "the app's instance is not reachable", keep=False)
                return False
            try:
                head = request_head(
                    req, peer=client.peer, trusted=client.trusted, authority=state.authority, tls=client.tls
                )
                up.write(head)
                _, _, switched = await self._relay(client, up, req, may_retry=False)
                if switched is not None:
                    client.stream.write(switched)
                    up.write(early)
                    await asyncio.gather(_pump(client.stream, up), _pump(up, client.stream))
            except _UpstreamFailed as e:
                if not e.started:
                    client.reply(req, 502, "the app's instance failed to answer", keep=False)
            finally:
                up.close()
            return False  # after an upgrade attempt the connection is no longer HTTP/1.1 we parse
        finally:
            self._table.end(state)


async def _pump(src: Stream, dst: Stream) -> None:
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
