"""Fuzzing the router's HTTP/1.1 parsers and the heads it writes: any bytes, any cuts, only clean
outcomes (events, or a ParseError carrying a 4xx/5xx status); what a parsed request becomes upstream
is one well-formed head."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tako_core.agent.heads import request_head
from tako_core.agent.http1 import BACKENDS, ParseError, Parser, Request, select_backend

START = [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"GET / HTTP/1.0\r\n"]
HEADER = st.tuples(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"X_Forwarded_For",
            b"Forwarded",
            b"Upgrade",
            b"Expect",
            b"X-Forwarded-Host",
        ]
    )
    | st.binary(max_size=12),
    st.sampled_from([b"a.test", b"5", b"chunked", b"close", b"upgrade", b"100-continue", b"-1"])
    | st.binary(max_size=12),
)
MESSAGES = st.builds(
    lambda start, headers, body: (
        start + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
    ),
    st.sampled_from(START) | st.binary(max_size=20),
    st.lists(HEADER, max_size=6),
    st.binary(max_size=40),
) | st.binary(max_size=200)


def refusal(parser: Parser, data: bytes, cuts: list[int]) -> ParseError | None:
    """Feed `data` cut at `cuts` (never an empty piece: the router feeds only what it read), then
    the end; the ParseError it raised, if any."""
    pieces, at = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        pieces.append(data[at:cut])
        at = cut
    pieces.append(data[at:])
    try:
        for piece in pieces:
            if piece:
                parser.feed(piece)
        parser.feed_eof()
    except ParseError as e:
        return e
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=MESSAGES, cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=4))
def test_any_request_bytes_parse_or_fail_cleanly(backend: str, data: bytes, cuts: list[int]) -> None:
    parser = select_backend(backend).request_parser(1024)
    refused = refusal(parser, data, cuts)
    if refused is not None:
        assert 400 <= refused.status < 600
        return
    for ev in parser.events:
        if isinstance(ev, Request):
            head = request_head(ev, peer=b"198.51.100.7", trusted=False, authority=b"127.0.0.1:9000")
            assert head.endswith(b"\r\n\r\n")
            assert head.count(b"\r\n\r\n") == 1
            names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")[1:] if line]
            assert names.count(b"x-forwarded-for") == 1
            assert not {b"forwarded", b"x-real-ip"} & set(names)
            assert not any(b"_" in n and n.replace(b"_", b"-").startswith(b"x-forwarded-") for n in names)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300, deadline=None)
@given(data=MESSAGES, cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=4))
def test_any_response_bytes_parse_or_fail_cleanly(backend: str, data: bytes, cuts: list[int]) -> None:
    chosen = select_backend(backend)
    req = chosen.request_parser(1024)
    req.feed(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    [request, *_] = req.events
    assert isinstance(request, Request)
    refused = refusal(chosen.response_parser(request, 1024), data, cuts)
    assert refused is None or 400 <= refused.status < 600
