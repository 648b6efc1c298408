"""The router's fallback parser: h11 (pure Python, bundled in the agent zipapp), as `http1` events.

h11 parses one request/response cycle per Connection; a fresh Connection per message (seeded with the
previous one's trailing bytes) turns it into a plain message parser. The router does its own framing
on output, so h11's send side is only used to tell a client Connection the request method.
"""

from __future__ import annotations

from typing import Any

import h11

from tako_core.agent.http1 import (
    END,
    Data,
    Event,
    Headers,
    ParseError,
    Parser,
    Request,
    Upgraded,
    request_event,
    response_event,
)

_MINOR = {b"1.0": 0, b"1.1": 1}


def _headers(ev: Any, max_head: int, too_large: int) -> Headers:
    headers: Headers = list(ev.headers.raw_items())
    # h11 only bounds a head that is still incomplete; one that arrives whole in a read is measured here.
    if sum(len(n) + len(v) + 4 for n, v in headers) > max_head:
        raise ParseError(too_large, "header section too large")
    return headers


class _H11Parser:
    """Feeds h11 (a sans-IO connection); `_pump` turns what it yields into `http1` events."""

    events: list[Event]
    _conn: h11.Connection
    _done: bool

    def feed(self, data: bytes) -> None:
        if not self._done:
            self._conn.receive_data(data)
            self._pump()

    def feed_eof(self) -> None:
        if not self._done:
            self._conn.receive_data(b"")
            self._pump()

    def _pump(self) -> None:
        raise NotImplementedError


class _RequestParser(_H11Parser):
    def __init__(self, max_head: int) -> None:
        self.events = []
        self._max_head = max_head
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._head: Request | None = None
        self._done = False

    def _pump(self) -> None:
        conn = self._conn
        events = self.events
        while True:
            try:
                ev: Any = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise ParseError(e.error_status_hint, f"malformed request: {e}") from None
            t = type(ev)
            if t is h11.Data:
                events.append(Data(bytes(ev.data)))
            elif t is h11.Request:
                minor = _MINOR.get(ev.http_version, 1)
                self._head = request_event(ev.method, ev.target, minor, _headers(ev, self._max_head, 431))
                events.append(self._head)
            elif t is h11.EndOfMessage:
                events.append(END)
                leftover = conn.trailing_data[0]
                head = self._head
                assert head is not None  # h11 has sent the Request before its EndOfMessage
                # After an upgrade or CONNECT the bytes are not HTTP any more (llhttp stops there too).
                switching = head.upgrade or head.method == b"CONNECT"
                if switching or not head.keep_alive:
                    self._done = True
                    if switching:
                        events.append(Upgraded(leftover))
                    return
                conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
                if leftover:
                    conn.receive_data(leftover)
            else:  # NEED_DATA, or ConnectionClosed between requests
                return


class _ResponseParser(_H11Parser):
    def __init__(self, request: Request, max_head: int) -> None:
        self.events = []
        self._max_head = max_head
        self._done = False
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        headers = [(b"host", b"upstream")]
        if request.upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"tunnel")]
        conn.send(h11.Request(method=request.method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        self._conn = conn

    def feed_eof(self) -> None:
        super().feed_eof()
        if not self._done:
            raise ParseError(502, "upstream closed the connection inside a response")

    def _pump(self) -> None:
        conn = self._conn
        events = self.events
        while True:
            try:
                ev: Any = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise ParseError(502, f"malformed upstream response: {e}") from None
            t = type(ev)
            if t is h11.Data:
                events.append(Data(bytes(ev.data)))
            elif t is h11.Response or t is h11.InformationalResponse:
                minor = _MINOR.get(ev.http_version, 1)
                headers = _headers(ev, self._max_head, 502)
                events.append(response_event(ev.status_code, ev.reason, minor, headers))
                if ev.status_code == 101:
                    self._done = True
                    events.append(Upgraded(conn.trailing_data[0]))
                    return
            elif t is h11.EndOfMessage:
                events.append(END)
                self._done = True
                return
            else:
                return


class H11Backend:
    name = "h11"

    def request_parser(self, max_head: int) -> Parser:
        return _RequestParser(max_head)

    def response_parser(self, request: Request, max_head: int) -> Parser:
        return _ResponseParser(request, max_head)
