"""The router's HTTP/1.1 parsers, byte level, without sockets (after h11's tests/test_io.py).

Every case runs on both backends (llhttp through httptools, and h11) and with its bytes fed whole, one
byte at a time, three at a time and in random cuts: the same events must come out every way. Data
events are merged (a split body arrives in more pieces); bytes fed after an Upgraded event belong to
the tunnel, as in the router, and are counted as its `rest`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from tako_core.agent.http1 import (
    BACKENDS,
    END,
    Data,
    Event,
    Headers,
    InformationalResponse,
    ParseError,
    Parser,
    Request,
    Response,
    Upgraded,
    select_backend,
)

MAX_HEAD = 4096


def request(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: Headers | None = None,
    *,
    minor: int = 1,
    length: int | None = None,
    chunked: bool = False,
    keep_alive: bool = True,
    upgrade: bool = False,
    expect_continue: bool = False,
    tokens: Sequence[bytes] = (),
) -> Request:
    headers = [(b"Host", b"a.test")] if headers is None else headers
    host = next((v for n, v in headers if n.lower() == b"host"), None)
    tokens_ = frozenset(tokens)
    return Request(
        method, target, minor, headers, host, length, chunked, keep_alive, upgrade, expect_continue, tokens_
    )


def response(
    status: int = 200,
    reason: bytes = b"OK",
    headers: Headers | None = None,
    *,
    minor: int = 1,
    length: int | None = None,
    chunked: bool = False,
    keep_alive: bool = True,
    tokens: Sequence[bytes] = (),
) -> Response:
    return Response(status, reason, minor, headers or [], length, chunked, keep_alive, frozenset(tokens))


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    # The events, or the status of the ParseError; a dict when the two parsers differ.
    expect: list[Event] | int | dict[str, list[Event] | int]
    method: bytes | None = None  # a response to a request with this method (None: a request)
    upgrade: bool = False  # the request asked to switch protocols
    eof: bool = False  # the peer closes after the bytes

    def expected(self, backend: str) -> list[Event] | int:
        return self.expect[backend] if isinstance(self.expect, dict) else self.expect


CL_BODY = b"POST /in HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED_BODY = (
    b"POST /in HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;name=value\r\nhello\r\n6;q="x"\r\n world\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n'
)
FOLDED = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: one\r\n two\r\n\r\n"

REQUESTS = [
    Case("get", b"GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n", [request(target=b"/p?q=1"), END]),
    Case(
        "content-length",
        CL_BODY,
        [
            request(b"POST", b"/in", [(b"Host", b"a.test"), (b"Content-Length", b"5")], length=5),
            Data(b"hello"),
            END,
        ],
    ),
    Case(
        "chunked-with-extensions-and-trailers",
        CHUNKED_BODY,
        [
            request(
                b"POST", b"/in", [(b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked")], chunked=True
            ),
            Data(b"hello world"),
            END,
        ],
    ),
    Case(
        "pipelined",
        b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n" + CL_BODY + b"HEAD /3 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        [
            request(target=b"/1"),
            END,
            request(b"POST", b"/in", [(b"Host", b"a.test"), (b"Content-Length", b"5")], length=5),
            Data(b"hello"),
            END,
            request(b"HEAD", b"/3"),
            END,
        ],
    ),
    Case(
        "expect-100-continue",
        b"PUT /x HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nping",
        [
            request(
                b"PUT",
                b"/x",
                [(b"Host", b"a.test"), (b"Expect", b"100-continue"), (b"Content-Length", b"4")],
                length=4,
                expect_continue=True,
            ),
            Data(b"ping"),
            END,
        ],
    ),
    Case(
        "upgrade",
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05early",
        [
            request(
                target=b"/ws",
                headers=[(b"Host", b"a.test"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
                upgrade=True,
                tokens=[b"upgrade"],
            ),
            END,
            Upgraded(b"\x81\x05early"),
        ],
    ),
    Case(
        "upgrade-header-not-named-in-connection",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n",
        [
            request(headers=[(b"Host", b"a.test"), (b"Upgrade", b"websocket")]),
            END,
            request(target=b"/next"),
            END,
        ],
    ),
    Case(
        "connect",
        b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01",
        [request(b"CONNECT", b"a.test:443", [(b"Host", b"a.test:443")]), END, Upgraded(b"\x16\x03\x01")],
    ),
    Case(
        "connection-close-ends-parsing",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        b"GET /ignored HTTP/1.1\r\nHost: a.test\r\n\r\n",
        [
            request(
                headers=[(b"Host", b"a.test"), (b"Connection", b"close")], keep_alive=False, tokens=[b"close"]
            ),
            END,
        ],
    ),
    Case(
        "http10",
        b"GET / HTTP/1.0\r\n\r\nGET /ignored HTTP/1.0\r\n\r\n",
        [request(headers=[], minor=0, keep_alive=False), END],
    ),
    Case(
        "http10-keep-alive",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
        [
            request(headers=[(b"Connection", b"keep-alive")], minor=0, tokens=[b"keep-alive"]),
            END,
            request(target=b"/2", headers=[], minor=0, keep_alive=False),
            END,
        ],
    ),
    Case("eof-between-requests", b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", [request(), END], eof=True),
    Case("eof-inside-head", b"GET / HTTP/1.1\r\nHost: a.te", 400, eof=True),
    Case("eof-inside-body", CL_BODY[:-2], 400, eof=True),
    # Refused: what two parties could frame two ways (request smuggling), and what the router does not do.
    Case(
        "content-length-and-chunked",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    Case(
        "conflicting-content-lengths",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    Case(
        "repeated-content-length",  # the same value twice: llhttp refuses, h11 keeps one
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        {
            "httptools": 400,
            "h11": [
                request(b"POST", b"/", [(b"Host", b"a.test"), (b"Content-Length", b"3")], length=3),
                Data(b"abc"),
                END,
            ],
        },
    ),
    Case("negative-content-length", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n", 400),
    Case(
        "content-length-not-a-number", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1e3\r\n\r\n", 400
    ),
    Case(
        "content-length-19-digits",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: " + b"1" * 19 + b"\r\n\r\n",
        400,
    ),
    Case(
        "transfer-encoding-not-chunked",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    Case(
        "transfer-encoding-twice",  # refused by both: llhttp as malformed, h11 as unsupported
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        {"httptools": 400, "h11": 501},
    ),
    Case(
        "bad-chunk-size", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400
    ),
    # obs-fold (RFC 9112 5.2: refuse, or unfold before use): llhttp refuses, h11 unfolds.
    Case(
        "obs-fold",
        FOLDED,
        {"httptools": 400, "h11": [request(headers=[(b"Host", b"a.test"), (b"X-A", b"one two")]), END]},
    ),
    Case("space-before-colon", b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n", 400),
    Case("oversized-head", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + b"x" * MAX_HEAD + b"\r\n\r\n", 431),
    Case("endless-header-line", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + b"x" * MAX_HEAD, 431),
    Case("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    Case("two-hosts", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
    Case("unsupported-expect", b"GET / HTTP/1.1\r\nHost: a.test\r\nExpect: teapot\r\n\r\n", 417),
    Case("garbage", b"NOT HTTP AT ALL\r\n\r\n", 400),
]

LENGTH_13 = [(b"Content-Length", b"13")]
RESPONSES = [
    Case(
        "content-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!",
        [response(headers=LENGTH_13, length=13), Data(b"Hello, world!"), END],
        method=b"GET",
    ),
    Case(
        "chunked-with-extensions-and-trailers",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nServer-Timing: t;dur=1\r\n\r\n",
        [response(201, b"Created", [(b"Transfer-Encoding", b"chunked")], chunked=True), Data(b"abcde"), END],
        method=b"POST",
    ),
    Case(
        "to-head",  # a response to HEAD has no body, whatever its headers say
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n",
        [response(headers=LENGTH_13, length=13), END],
        method=b"HEAD",
    ),
    Case("204", b"HTTP/1.1 204 No Content\r\n\r\n", [response(204, b"No Content"), END], method=b"DELETE"),
    Case(
        "304-with-length",
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 13\r\nETag: "v1"\r\n\r\n',
        [response(304, b"Not Modified", [*LENGTH_13, (b"ETag", b'"v1"')], length=13), END],
        method=b"GET",
    ),
    Case(
        "1xx-then-final",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        [
            InformationalResponse(100, b"Continue", [], frozenset()),
            InformationalResponse(103, b"Early Hints", [(b"Link", b"</s.css>")], frozenset()),
            response(headers=[(b"Content-Length", b"2")], length=2),
            Data(b"ok"),
            END,
        ],
        method=b"POST",
    ),
    Case(
        "close-delimited",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this, until the close",
        [response(headers=[(b"Content-Type", b"text/plain")]), Data(b"all of this, until the close"), END],
        method=b"GET",
        eof=True,
    ),
    Case(
        "http10-keep-alive",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        [
            response(
                headers=[(b"Connection", b"keep-alive"), (b"Content-Length", b"2")],
                minor=0,
                length=2,
                tokens=[b"keep-alive"],
            ),
            Data(b"ok"),
            END,
        ],
        method=b"GET",
    ),
    Case(
        "switching-protocols",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
        [
            InformationalResponse(
                101,
                b"Switching Protocols",
                [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
                frozenset({b"upgrade"}),
            ),
            Upgraded(b"\x81\x02hi"),
        ],
        method=b"GET",
        upgrade=True,
    ),
    Case(
        "upgrade-declined",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        [response(headers=[(b"Content-Length", b"2")], length=2), Data(b"no"), END],
        method=b"GET",
        upgrade=True,
    ),
    Case(
        "switching-protocols-unasked",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        502,
        method=b"GET",
    ),
    Case(
        "eof-inside-body", b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello", 502, method=b"GET", eof=True
    ),
    Case("eof-before-response", b"", 502, method=b"GET", eof=True),
    Case(
        "content-length-and-chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        502,
        method=b"GET",
    ),
    Case("bad-content-length", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 502, method=b"GET"),
    Case(
        "oversized-head",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * MAX_HEAD + b"\r\nContent-Length: 0\r\n\r\n",
        502,
        method=b"GET",
    ),
    Case("garbage", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 502, method=b"GET"),
]


def _splits(data: bytes) -> dict[str, list[bytes]]:
    rng = random.Random(len(data))  # fixed: the same cuts on every run
    cuts = sorted(rng.sample(range(1, len(data)), min(6, len(data) - 1))) if len(data) > 1 else []
    return {
        "whole": [data],
        "bytewise": [data[i : i + 1] for i in range(len(data))],
        "threes": [data[i : i + 3] for i in range(0, len(data), 3)],
        "random": [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)],
    }


SPLITS = list(_splits(b"x"))


def _parser(backend: str, case: Case) -> Parser:
    chosen = select_backend(backend)
    if case.method is None:
        return chosen.request_parser(MAX_HEAD)
    return chosen.response_parser(request(case.method, upgrade=case.upgrade), MAX_HEAD)


def _run(parser: Parser, chunks: list[bytes], *, eof: bool) -> list[Event]:
    """Feed the chunks as a connection would; the events, Data merged."""
    events: list[Event] = []
    tunnel: bytes | None = None  # after Upgraded the bytes are the tunnel's, never parsed
    for chunk in chunks:
        if tunnel is not None:
            tunnel += chunk
            continue
        parser.feed(chunk)
        events += parser.events
        parser.events.clear()
        if events and isinstance(events[-1], Upgraded):
            tunnel = b""
    if eof:
        parser.feed_eof()
        events += parser.events
    merged: list[Event] = []
    for ev in events:
        if isinstance(ev, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].data + ev.data)
        elif isinstance(ev, Upgraded):
            merged.append(Upgraded(ev.rest + (tunnel or b"")))
        else:
            merged.append(ev)
    return merged


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _check(backend: str, case: Case, split: str) -> None:
    chunks = _splits(case.data)[split] if case.data else []
    expected = case.expected(backend)
    if isinstance(expected, int):
        with pytest.raises(ParseError) as refused:
            _run(_parser(backend, case), chunks, eof=case.eof)
        assert refused.value.status == expected, str(refused.value)
    else:
        assert _run(_parser(backend, case), chunks, eof=case.eof) == expected


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", REQUESTS, ids=[c.id for c in REQUESTS])
def test_request(backend: str, case: Case, split: str) -> None:
    _check(backend, case, split)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", RESPONSES, ids=[c.id for c in RESPONSES])
def test_response(backend: str, case: Case, split: str) -> None:
    _check(backend, case, split)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown HTTP parser backend"):
        select_backend("picohttpparser")


def test_default_backend_is_llhttp_when_importable() -> None:
    assert select_backend().name == "httptools"  # the dev install has it
