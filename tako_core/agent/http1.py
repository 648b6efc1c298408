"""HTTP/1.1 message parsing for the router: one event stream over two real parsers.

`httptools` (llhttp, C) is used when importable; `h11` (pure Python, bundled in the agent zipapp) is
the fallback. Both adapters turn bytes into the same flat events, appended to `parser.events`:

    (HEAD, Head)   a request or final response head     (INFO, Head)  a 1xx response other than 101
    (DATA, bytes)  body bytes, already de-chunked       (END, None)   the message is complete
    (UPGRADE, bytes)  the connection switched protocols; the payload is the bytes after the head

Framing facts (length, chunked, keep-alive, upgrade) are derived from the headers by `_analyze`, the
same code for both parsers, so the router behaves identically whichever parser runs. Events are plain
tuples and `Head` has slots: this is the router's per-request hot path.
"""

from __future__ import annotations

from typing import Any, Protocol

import h11

try:  # llhttp when the host has it (e.g. Debian's python3-httptools); never required.
    import httptools
except ImportError:  # pragma: no cover - depends on the host
    httptools = None  # type: ignore[assignment]

HEAD, DATA, END, INFO, UPGRADE = 0, 1, 2, 3, 4

Event = tuple[int, Any]
Headers = list[tuple[bytes, bytes]]


class ParseError(Exception):
    """The peer sent something the router refuses; `status` is the answer it gets (client side)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Head:
    """One parsed message head. `headers` keep the peer's spelling; the rest is derived from them."""

    __slots__ = (
        "chunked",
        "conn_tokens",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "minor",
        "reason",
        "status",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        headers: Headers,
        minor: int,
        method: bytes = b"",
        target: bytes = b"",
        status: int = 0,
        reason: bytes = b"",
    ) -> None:
        self.headers = headers
        self.minor = minor
        self.method = method
        self.target = target
        self.status = status
        self.reason = reason
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.host: bytes | None = None
        self.conn_tokens: frozenset[bytes] = frozenset()


def _analyze(head: Head, is_request: bool) -> None:
    """Derive framing from the headers; refuse what could be read two ways (request smuggling)."""
    content_length: bytes | None = None
    te: bytes | None = None
    connection: list[bytes] = []
    upgrade = False
    for name, value in head.headers:
        n = name.lower()
        if n == b"content-length":
            v = value.strip()
            if content_length is not None and content_length != v:
                raise ParseError(400, "conflicting Content-Length headers")
            content_length = v
        elif n == b"transfer-encoding":
            te = value if te is None else te + b"," + value
        elif n == b"connection":
            connection.extend(t.strip().lower() for t in value.split(b","))
        elif n == b"host" and is_request:
            if head.host is not None:
                raise ParseError(400, "more than one Host header")
            head.host = value.strip()
        elif n == b"upgrade":
            upgrade = True
        elif n == b"expect" and is_request:
            if value.strip().lower() != b"100-continue":
                raise ParseError(417, "unsupported Expect")
            head.expect_continue = True
    if te is not None:
        if content_length is not None:
            raise ParseError(400, "both Content-Length and Transfer-Encoding")
        if te.strip().lower() != b"chunked":
            raise ParseError(501, "unsupported Transfer-Encoding")
        head.chunked = True
    elif content_length is not None:
        if not content_length.isdigit() or len(content_length) > 18:
            raise ParseError(400, "bad Content-Length")
        head.content_length = int(content_length)
    tokens = frozenset(connection)
    head.conn_tokens = tokens
    head.keep_alive = (b"keep-alive" in tokens) if head.minor == 0 else (b"close" not in tokens)
    head.upgrade = upgrade and b"upgrade" in tokens
    if is_request and head.host is None and head.minor == 1:
        raise ParseError(400, "missing Host header")


class RequestParser(Protocol):
    events: list[Event]

    def feed(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


class ResponseParser(Protocol):
    events: list[Event]

    def feed(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


class Backend(Protocol):
    name: str

    def request_parser(self, max_head: int) -> RequestParser: ...
    def response_parser(self, method: bytes, upgrade: bool, max_head: int) -> ResponseParser: ...


# --- httptools (llhttp) ---------------------------------------------------------------------------


class _LlhttpBase:
    """Shared callback plumbing; an exception raised in a callback is kept and re-raised by feed."""

    def __init__(self, max_head: int) -> None:
        self.events: list[Event] = []
        self._headers: Headers = []
        self._head_bytes = 0
        self._max_head = max_head
        self._in_head = False
        self._error: ParseError | None = None
        self._done = False  # nothing more may be parsed on this parser

    def on_message_begin(self) -> None:
        self._in_head = True
        self._headers = []
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            self._error = ParseError(431, "header section too large")
            raise self._error
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.events.append((DATA, body))

    def _check_head_size(self, fed: int) -> None:
        # A head that never ends (e.g. one endless header line) is refused before memory grows.
        if self._in_head:
            self._head_bytes += fed
            if self._head_bytes > self._max_head:
                raise ParseError(431, "header section too large")


class _LlhttpRequestParser(_LlhttpBase):
    def __init__(self, max_head: int) -> None:
        super().__init__(max_head)
        self._url = b""
        self._p = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        p = self._p
        head = Head(self._headers, 0 if p.get_http_version() == "1.0" else 1, p.get_method(), self._url)
        self._in_head = False
        try:
            _analyze(head, True)
        except ParseError as e:
            self._error = e
            raise
        self.events.append((HEAD, head))

    def on_message_complete(self) -> None:
        self.events.append((END, None))
        if not self._p.should_keep_alive():
            self._done = True

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._done = True
            self.events.append((UPGRADE, data[e.args[0] :]))
        except httptools.HttpParserError as e:
            if self._error is not None:
                raise self._error from None
            if not self._done:  # bytes after a `Connection: close` request are just ignored
                raise ParseError(400, f"malformed request: {e}") from None
        self._check_head_size(len(data))

    def feed_eof(self) -> None:
        if self._in_head or (self.events and self.events[-1][0] != END):
            raise ParseError(400, "connection closed inside a request")


class _LlhttpResponseParser(_LlhttpBase):
    def __init__(self, method: bytes, upgrade: bool, max_head: int) -> None:
        super().__init__(max_head)
        self._no_body = method == b"HEAD"
        self._upgrade = upgrade
        self._reason = b""
        self._info = False
        self._until_eof = False
        self._p = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        status = self._p.get_status_code()
        head = Head(
            self._headers, 0 if self._p.get_http_version() == "1.0" else 1, status=status, reason=self._reason
        )
        self._in_head = False
        try:
            _analyze(head, False)
        except ParseError as e:
            self._error = ParseError(502, str(e))
            raise self._error from None
        if 100 <= status < 200 and status != 101:
            self._info = True
            self.events.append((INFO, head))
            return
        self.events.append((HEAD, head))
        if self._no_body or status in (204, 304):
            # llhttp cannot be told the request was HEAD: the message ends here, whatever it declares.
            self.events.append((END, None))
            self._done = True
        else:
            self._until_eof = head.content_length is None and not head.chunked and status != 101

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self.events.append((DATA, body))

    def on_message_complete(self) -> None:
        if self._info:
            self._info = False
        elif not self._done:
            self.events.append((END, None))
            self._done = True

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if not self._upgrade or self._p.get_status_code() != 101:
                raise ParseError(502, "upstream switched protocols unasked") from None
            self._done = True
            self.events.append((UPGRADE, data[e.args[0] :]))
        except httptools.HttpParserError as e:
            if self._error is not None:
                raise self._error from None
            raise ParseError(502, f"malformed upstream response: {e}") from None
        self._check_head_size(len(data))

    def feed_eof(self) -> None:
        if self._done:
            return
        if self._until_eof and not self._in_head:
            self.events.append((END, None))
            self._done = True
            return
        raise ParseError(502, "upstream closed the connection inside a response")


class _LlhttpBackend:
    name = "httptools"

    def request_parser(self, max_head: int) -> RequestParser:
        return _LlhttpRequestParser(max_head)

    def response_parser(self, method: bytes, upgrade: bool, max_head: int) -> ResponseParser:
        return _LlhttpResponseParser(method, upgrade, max_head)


# --- h11 ------------------------------------------------------------------------------------------
# h11 parses one request/response cycle per Connection; a fresh Connection per message (seeded with
# the previous one's trailing bytes) turns it into a plain message parser. The router does its own
# framing on output, so h11's send side is only used to tell a client Connection the request method.

_H11_MINOR = {b"1.0": 0, b"1.1": 1}


def _h11_head(ev: Any, is_request: bool, max_head: int) -> Head:
    headers: Headers = list(ev.headers.raw_items())
    # h11 only bounds a head that is still incomplete; one that arrives whole in a read is measured here.
    if sum(len(n) + len(v) + 4 for n, v in headers) > max_head:
        raise ParseError(431 if is_request else 502, "header section too large")
    minor = _H11_MINOR.get(ev.http_version, 1)
    if is_request:
        head = Head(headers, minor, ev.method, ev.target)
    else:
        head = Head(headers, minor, status=ev.status_code, reason=ev.reason)
    try:
        _analyze(head, is_request)
    except ParseError as e:
        if is_request:
            raise
        raise ParseError(502, str(e)) from None  # a bad upstream answer is the gateway's problem
    return head


class _H11RequestParser:
    def __init__(self, max_head: int) -> None:
        self.events: list[Event] = []
        self._max_head = max_head
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._head: Head | None = None
        self._done = False

    def feed(self, data: bytes) -> None:
        if not self._done:
            self._conn.receive_data(data)
            self._pump()

    def feed_eof(self) -> None:
        if self._done:
            return
        self._conn.receive_data(b"")
        self._pump()

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
                events.append((DATA, bytes(ev.data)))
            elif t is h11.Request:
                self._head = _h11_head(ev, True, self._max_head)
                events.append((HEAD, self._head))
            elif t is h11.EndOfMessage:
                events.append((END, None))
                leftover = conn.trailing_data[0]
                head = self._head
                if head is not None and (head.upgrade or not head.keep_alive):
                    self._done = True
                    if head.upgrade:
                        events.append((UPGRADE, leftover))
                    return
                conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
                if leftover:
                    conn.receive_data(leftover)
            else:  # NEED_DATA, or ConnectionClosed between requests
                return


class _H11ResponseParser:
    def __init__(self, method: bytes, upgrade: bool, max_head: int) -> None:
        self.events: list[Event] = []
        self._max_head = max_head
        self._done = False
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        headers = [(b"host", b"upstream")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"tunnel")]
        conn.send(h11.Request(method=method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        self._conn = conn

    def feed(self, data: bytes) -> None:
        if not self._done:
            self._conn.receive_data(data)
            self._pump()

    def feed_eof(self) -> None:
        if not self._done:
            self._conn.receive_data(b"")
            self._pump()
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
                events.append((DATA, bytes(ev.data)))
            elif t is h11.Response:
                events.append((HEAD, _h11_head(ev, False, self._max_head)))
            elif t is h11.EndOfMessage:
                events.append((END, None))
                self._done = True
                return
            elif t is h11.InformationalResponse:
                head = _h11_head(ev, False, self._max_head)
                if head.status == 101:
                    self._done = True
                    events.append((HEAD, head))
                    events.append((UPGRADE, conn.trailing_data[0]))
                    return
                events.append((INFO, head))
            else:
                return


class _H11Backend:
    name = "h11"

    def request_parser(self, max_head: int) -> RequestParser:
        return _H11RequestParser(max_head)

    def response_parser(self, method: bytes, upgrade: bool, max_head: int) -> ResponseParser:
        return _H11ResponseParser(method, upgrade, max_head)


BACKENDS = ("httptools", "h11")


def select_backend(name: str | None = None) -> Backend:
    """`None`: llhttp when importable, else h11. Naming one that cannot load is a programming error."""
    if name is None:
        name = "h11" if httptools is None else "httptools"
    if name == "httptools":
        if httptools is None:
            raise RuntimeError("httptools is not importable on this host")
        return _LlhttpBackend()
    if name == "h11":
        return _H11Backend()
    raise ValueError(f"unknown HTTP parser backend {name!r}; choose one of {BACKENDS}")
