"""HTTP/1.1 message parsing for the router: typed events from either of two real parsers.

`httptools` (llhttp, C) is used when importable (`http1_llhttp`); `h11` (pure Python, bundled in the
agent zipapp) is the fallback (`http1_h11`). Both turn bytes into the same events, appended to
`parser.events`, a closed union:

    Request / Response       a request or final response head
    InformationalResponse    a 1xx response; a 101 is followed by Upgraded
    Data                     body bytes, already de-chunked
    EndOfMessage             the message is complete (END is its one instance)
    Upgraded                 the connection switched protocols; `rest` is the bytes after the head

Framing facts (length, chunked, keep-alive, upgrade) are derived from the headers here, by the same
code for both parsers, so the router behaves identically whichever parser runs.

The events are slotted dataclasses whose fields are `Final`: mypy --strict refuses any assignment to
them, and they cost what a plain slotted class costs. They are built and read per request on the
router's hot path; measured with callgrind on CPython 3.11, building an 11-field head takes ~3.7k
instructions (NamedTuple ~4.6k, frozen slotted dataclass ~17.7k: every field goes through
object.__setattr__), and ten field reads ~1.8k (NamedTuple ~3.2k: its getters are not specialized).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Request:
    """A request head. `headers` keep the peer's spelling; the fields after them derive from them."""

    method: Final[bytes]
    target: Final[bytes]
    minor: Final[int]  # HTTP/1.<minor>
    headers: Final[Headers]
    host: Final[bytes | None]
    content_length: Final[int | None]
    chunked: Final[bool]
    keep_alive: Final[bool]
    upgrade: Final[bool]  # asks to switch protocols (an Upgrade header named in Connection)
    expect_continue: Final[bool]
    conn_tokens: Final[frozenset[bytes]]  # the Connection header's tokens, lower case


@dataclass(slots=True)
class Response:
    """A final response head (status 200 and up)."""

    status: Final[int]
    reason: Final[bytes]
    minor: Final[int]
    headers: Final[Headers]
    content_length: Final[int | None]
    chunked: Final[bool]
    keep_alive: Final[bool]
    conn_tokens: Final[frozenset[bytes]]


@dataclass(slots=True)
class InformationalResponse:
    """A 1xx response head: followed by the next response head, or by Upgraded after a 101."""

    status: Final[int]
    reason: Final[bytes]
    headers: Final[Headers]
    conn_tokens: Final[frozenset[bytes]]


@dataclass(slots=True)
class Data:
    data: Final[bytes]


@dataclass(slots=True)
class EndOfMessage:
    """The message is complete. Trailers of a chunked message are dropped."""


END = EndOfMessage()


@dataclass(slots=True)
class Upgraded:
    """The connection is no longer HTTP/1.1 from here on; `rest` followed the head in the same read."""

    rest: Final[bytes]


Event: TypeAlias = Request | Response | InformationalResponse | Data | EndOfMessage | Upgraded


class ParseError(Exception):
    """The peer sent something the router refuses; `status` is the answer it gets (client side)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Parser(Protocol):
    """Bytes in, events out: `feed` appends to `events`, which the caller empties."""

    events: list[Event]

    def feed(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


class Backend(Protocol):
    name: str

    def request_parser(self, max_head: int) -> Parser: ...
    def response_parser(self, request: Request, max_head: int) -> Parser:
        """A parser for the response to `request` (its method and whether it asked to upgrade)."""
        ...


# --- framing: the same rules whichever parser read the head ---------------------------------------


# content_length, chunked, keep_alive, upgrade, host, expect_continue, conn_tokens: a plain tuple,
# since a NamedTuple would cost ~0.4 µs per message here.
_Framing: TypeAlias = tuple[int | None, bool, bool, bool, bytes | None, bool, frozenset[bytes]]


def _framing(headers: Headers, minor: int, *, request: bool) -> _Framing:
    """Derive framing from the headers; refuse what could be read two ways (request smuggling)."""
    content_length: bytes | None = None
    te: bytes | None = None
    host: bytes | None = None
    connection: list[bytes] = []
    upgrade = expect_continue = False
    for name, value in headers:
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
        elif n == b"host" and request:
            if host is not None:
                raise ParseError(400, "more than one Host header")
            host = value.strip()
        elif n == b"upgrade":
            upgrade = True
        elif n == b"expect" and request:
            if value.strip().lower() != b"100-continue":
                raise ParseError(417, "unsupported Expect")
            expect_continue = True
    length: int | None = None
    if te is not None:
        if content_length is not None:
            raise ParseError(400, "both Content-Length and Transfer-Encoding")
        if te.strip().lower() != b"chunked":
            raise ParseError(501, "unsupported Transfer-Encoding")
    elif content_length is not None:
        if not content_length.isdigit() or len(content_length) > 18:
            raise ParseError(400, "bad Content-Length")
        length = int(content_length)
    tokens = frozenset(connection)
    keep_alive = (b"keep-alive" in tokens) if minor == 0 else (b"close" not in tokens)
    if request and host is None and minor == 1:
        raise ParseError(400, "missing Host header")
    return length, te is not None, keep_alive, upgrade and b"upgrade" in tokens, host, expect_continue, tokens


def request_event(method: bytes, target: bytes, minor: int, headers: Headers) -> Request:
    length, chunked, keep_alive, upgrade, host, expect, tokens = _framing(headers, minor, request=True)
    return Request(method, target, minor, headers, host, length, chunked, keep_alive, upgrade, expect, tokens)


def response_event(
    status: int, reason: bytes, minor: int, headers: Headers
) -> Response | InformationalResponse:
    """An upstream's response head; what it refuses is a 502: a bad answer is the gateway's problem."""
    try:
        length, chunked, keep_alive, _, _, _, tokens = _framing(headers, minor, request=False)
    except ParseError as e:
        raise ParseError(502, str(e)) from None
    if status < 200:
        return InformationalResponse(status, reason, headers, tokens)
    return Response(status, reason, minor, headers, length, chunked, keep_alive, tokens)


BACKENDS = ("httptools", "h11")


def select_backend(name: str | None = None) -> Backend:
    """`None`: llhttp when importable, else h11. Naming one that cannot load is a programming error."""
    from tako_core.agent import http1_h11, http1_llhttp  # they build on this module

    if name is None:
        name = "httptools" if http1_llhttp.available() else "h11"
    if name == "httptools":
        if not http1_llhttp.available():
            raise RuntimeError("httptools is not importable on this host")
        return http1_llhttp.LlhttpBackend()
    if name == "h11":
        return http1_h11.H11Backend()
    raise ValueError(f"unknown HTTP parser backend {name!r}; choose one of {BACKENDS}")
