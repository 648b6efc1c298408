"""The router's fast parser: llhttp (C) through `httptools`, when the host has it (e.g. Debian's
python3-httptools) or `tako servers setup` unpacked its wheel into the agent's `bin/lib`; never
required. Its callbacks are turned into `http1` events."""

from __future__ import annotations

from tako_core.agent.http1 import (
    END,
    Data,
    Event,
    Headers,
    InformationalResponse,
    ParseError,
    Parser,
    Request,
    Upgraded,
    request_event,
    response_event,
)

try:
    import httptools
except ImportError:  # pragma: no cover - depends on the host
    httptools = None  # type: ignore[assignment]


def available() -> bool:
    return httptools is not None


class _LlhttpParser:
    """Shared callback plumbing; an exception raised in a callback is kept and re-raised by feed."""

    _too_large = 431  # the status a head over max_head gets

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
        if not self._in_head:
            return  # a trailer of a chunked body: dropped (llhttp reports it like a header)
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            self._error = ParseError(self._too_large, "header section too large")
            raise self._error
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if not self._done:  # a response to HEAD may declare a body llhttp would go on to read
            self.events.append(Data(body))

    def _check_head_size(self, fed: int) -> None:
        # A head that never ends (e.g. one endless header line) is refused before memory grows.
        if self._in_head:
            self._head_bytes += fed
            if self._head_bytes > self._max_head:
                raise ParseError(self._too_large, "header section too large")


class _RequestParser(_LlhttpParser):
    def __init__(self, max_head: int) -> None:
        super().__init__(max_head)
        self._url = b""
        self._in_message = False
        self._p = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = b""
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        p = self._p
        minor = 0 if p.get_http_version() == "1.0" else 1
        self._in_head = False
        try:
            self.events.append(request_event(p.get_method(), self._url, minor, self._headers))
        except ParseError as e:
            self._error = e
            raise

    def on_message_complete(self) -> None:
        self._in_message = False
        self.events.append(END)
        if not self._p.should_keep_alive():
            self._done = True

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._done = True
            self.events.append(Upgraded(data[e.args[0] :]))
        except httptools.HttpParserError as e:
            if self._error is not None:
                raise self._error from None
            if not self._done:  # bytes after a `Connection: close` request are just ignored
                raise ParseError(400, f"malformed request: {e}") from None
        self._check_head_size(len(data))

    def feed_eof(self) -> None:
        if self._in_message:
            raise ParseError(400, "connection closed inside a request")


class _ResponseParser(_LlhttpParser):
    _too_large = 502  # a bad upstream answer is the gateway's problem

    def __init__(self, request: Request, max_head: int) -> None:
        super().__init__(max_head)
        self._no_body = request.method == b"HEAD"
        self._upgrade = request.upgrade
        self._reason = b""
        self._info = False  # the message llhttp is in is a 1xx: its end is not the response's
        self._until_eof = False
        self._p = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        p = self._p
        status = p.get_status_code()
        minor = 0 if p.get_http_version() == "1.0" else 1
        self._in_head = False
        try:
            head = response_event(status, self._reason, minor, self._headers)
        except ParseError as e:
            self._error = e
            raise
        self.events.append(head)
        if isinstance(head, InformationalResponse):
            self._info = True
        elif self._no_body or status in (204, 304):
            # llhttp cannot be told the request was HEAD: the message ends here, whatever it declares.
            self.events.append(END)
            self._done = True
        else:
            self._until_eof = head.content_length is None and not head.chunked

    def on_message_complete(self) -> None:
        if self._info:
            self._info = False
        elif not self._done:
            self.events.append(END)
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
            self.events.append(Upgraded(data[e.args[0] :]))
        except httptools.HttpParserError as e:
            if self._error is not None:
                raise self._error from None
            raise ParseError(502, f"malformed upstream response: {e}") from None
        self._check_head_size(len(data))

    def feed_eof(self) -> None:
        if self._done:
            return
        if self._until_eof and not self._in_head:
            self.events.append(END)
            self._done = True
            return
        raise ParseError(502, "upstream closed the connection inside a response")


class LlhttpBackend:
    name = "httptools"

    def request_parser(self, max_head: int) -> Parser:
        return _RequestParser(max_head)

    def response_parser(self, request: Request, max_head: int) -> Parser:
        return _ResponseParser(request, max_head)
