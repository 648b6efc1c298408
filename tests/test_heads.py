"""The heads the router writes, as pure functions: what reaches the upstream and what the client gets."""

from __future__ import annotations

from tako_core.agent.heads import BodyFraming, reply, request_head, response_head
from tako_core.agent.http1 import Headers, Request, Response, request_event, response_event


def parsed_request(request_line: bytes, *header_lines: bytes) -> Request:
    method, target, version = request_line.split(b" ")
    headers: Headers = []
    for line in header_lines:
        name, value = line.split(b": ", 1)
        headers.append((name, value))
    return request_event(method, target, 0 if version == b"HTTP/1.0" else 1, headers)


def parsed_response(status: int, headers: Headers) -> Response:
    resp = response_event(status, b"Reason", 1, headers)
    assert isinstance(resp, Response)
    return resp


def header_lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")[1:]


def test_request_head_drops_hop_by_hop_and_sets_forwarded_headers() -> None:
    req = parsed_request(
        b"POST /p HTTP/1.1",
        b"Host: a.test",
        b"Connection: keep-alive, X-Secret",
        b"X-Secret: 1",
        b"Keep-Alive: 5",
        b"TE: trailers",
        b"Expect: 100-continue",
        b"Transfer-Encoding: chunked",
        b"X-Forwarded-For: 6.6.6.6",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: evil.test",
        b"Accept: */*",
    )
    head = request_head(req, peer=b"203.0.113.9", trusted=False, authority=b"127.0.0.1:8001")
    assert head.startswith(b"POST /p HTTP/1.1\r\n")
    assert header_lines(head) == [
        b"Host: a.test",
        b"Accept: */*",
        b"X-Forwarded-For: 203.0.113.9",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: a.test",
        b"Transfer-Encoding: chunked",  # the router re-frames the body it sends
    ]


def test_request_head_from_a_trusted_peer_keeps_and_extends_the_chain() -> None:
    req = parsed_request(
        b"GET / HTTP/1.1",
        b"Host: a.test",
        b"X-Forwarded-For: 198.51.100.1",
        b"X-Forwarded-For: 198.51.100.2",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: public.test",
    )
    head = request_head(req, peer=b"127.0.0.1", trusted=True, authority=b"127.0.0.1:8001")
    assert header_lines(head) == [
        b"Host: a.test",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: public.test",
        b"X-Forwarded-For: 198.51.100.1, 198.51.100.2, 127.0.0.1",
    ]


def test_request_head_without_host_names_the_upstream() -> None:
    req = parsed_request(b"GET / HTTP/1.0")
    head = request_head(req, peer=b"203.0.113.9", trusted=False, authority=b"127.0.0.1:8001")
    assert head.startswith(b"GET / HTTP/1.1\r\n")  # the router speaks 1.1 to upstreams
    assert header_lines(head) == [
        b"Host: 127.0.0.1:8001",
        b"X-Forwarded-For: 203.0.113.9",
        b"X-Forwarded-Proto: http",
    ]


def test_upgrade_request_head_keeps_the_upgrade() -> None:
    req = parsed_request(b"GET /ws HTTP/1.1", b"Host: a.test", b"Connection: Upgrade", b"Upgrade: websocket")
    head = request_head(req, peer=b"203.0.113.9", trusted=False, authority=b"x")
    assert b"Upgrade: websocket" in header_lines(head)
    assert header_lines(head)[-1] == b"Connection: upgrade"


def test_response_framing_towards_the_client() -> None:
    get11, get10 = parsed_request(b"GET / HTTP/1.1", b"Host: a.test"), parsed_request(b"GET / HTTP/1.0")
    head11 = parsed_request(b"HEAD / HTTP/1.1", b"Host: a.test")
    length = parsed_response(200, [(b"Content-Length", b"3"), (b"Connection", b"keep-alive")])
    unframed = parsed_response(200, [(b"Content-Type", b"text/plain")])
    assert response_head(length, get11, keep=True) == (
        b"HTTP/1.1 200 Reason\r\nContent-Length: 3\r\n\r\n",
        BodyFraming.LENGTH,
        True,
    )
    assert response_head(unframed, get11, keep=True) == (
        b"HTTP/1.1 200 Reason\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        BodyFraming.CHUNKED,
        True,
    )
    # An HTTP/1.0 client knows no chunked: the body ends when the connection closes.
    assert response_head(unframed, get10, keep=True) == (
        b"HTTP/1.1 200 Reason\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        BodyFraming.UNTIL_CLOSE,
        False,
    )
    assert response_head(length, get10, keep=True)[0].endswith(b"Connection: keep-alive\r\n\r\n")
    assert response_head(unframed, head11, keep=False) == (
        b"HTTP/1.1 200 Reason\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        BodyFraming.NONE,
        False,
    )
    for status in (204, 304):
        assert response_head(parsed_response(status, []), get11, keep=True)[1] is BodyFraming.NONE


def test_replies_from_the_router() -> None:
    get = parsed_request(b"GET / HTTP/1.1", b"Host: a.test")
    assert reply(get, 404, "no app", keep=True) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 7\r\n\r\n"
        b"no app\n"
    )
    head = reply(parsed_request(b"HEAD / HTTP/1.0"), 503, "busy", keep=True)
    assert head.endswith(b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\n")  # HEAD: the length, no body
    assert reply(None, 400, "bad", keep=False).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in reply(None, 400, "bad", keep=False)
    assert reply(None, 599, "odd", keep=False).startswith(b"HTTP/1.1 599 Unknown\r\n")
