"""The heads the router writes: requests to upstreams, responses to clients, its own short answers.

Hop-by-hop headers (and those a Connection header names) are dropped, since the router frames each
message itself. Forwarding headers (X-Forwarded-*, Forwarded, X-Real-IP): from a trusted peer (a
configured proxy, e.g. a TLS terminator) they are kept and the peer is appended to X-Forwarded-For;
from anyone else they are dropped and X-Forwarded-* written anew. Their underscore spellings
(X_Forwarded_For) are dropped from everyone: CGI-style apps read `_` and `-` as the same name.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

from tako_core.agent.http1 import Headers, InformationalResponse, Request, Response

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)


_FORWARDING = frozenset({b"forwarded", b"x-real-ip"})


def _is_forwarding(name: bytes) -> bool:
    return name in _FORWARDING or name.startswith(b"x-forwarded-")


class BodyFraming(enum.Enum):
    """How a response body is framed towards the client."""

    NONE = "no body"
    LENGTH = "content-length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until close"


def request_head(req: Request, *, peer: bytes, trusted: bool, authority: bytes, tls: bool = False) -> bytes:
    """The head sent upstream for `req` from `peer` (over TLS: `tls`); `authority` is the Host when
    `req` has none. An upgrade request keeps its Upgrade header and `Connection: upgrade`."""
    upgrade = req.upgrade
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
        if b"_" in n:
            if _is_forwarding(n.replace(b"_", b"-")):
                continue
        elif n in _FORWARDING:
            if not trusted:
                continue
        elif n.startswith(b"x-forwarded-"):
            if not trusted:
                continue
            if n == b"x-forwarded-for":
                xff = value + b", " if not xff else xff + value + b", "
                continue
            forwarded_proto = forwarded_proto or n == b"x-forwarded-proto"
            forwarded_host = forwarded_host or n == b"x-forwarded-host"
        lines += (name, b": ", value, b"\r\n")
    if req.host is None:
        lines += (b"Host: ", authority, b"\r\n")
    lines += (b"X-Forwarded-For: ", xff, peer, b"\r\n")
    if not forwarded_proto:
        lines.append(b"X-Forwarded-Proto: https\r\n" if tls else b"X-Forwarded-Proto: http\r\n")
    if not forwarded_host and req.host is not None:
        lines += (b"X-Forwarded-Host: ", req.host, b"\r\n")
    if upgrade:
        lines.append(b"Connection: upgrade\r\n")
    elif req.chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(resp: Response, req: Request, *, keep: bool) -> tuple[bytes, BodyFraming, bool]:
    """The head the client gets, its body framing, and whether the client connection stays open
    (`keep`: it would, as far as the request goes)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason)]
    _append_end_to_end(lines, resp.headers, resp.conn_tokens)
    if req.method == b"HEAD" or resp.status in (204, 304):
        framing = BodyFraming.NONE
    elif resp.content_length is not None:
        framing = BodyFraming.LENGTH
    elif req.minor == 1:
        framing = BodyFraming.CHUNKED
        lines.append(b"Transfer-Encoding: chunked\r\n")
    else:
        framing = BodyFraming.UNTIL_CLOSE  # an HTTP/1.0 client knows no chunked: the body ends at close
        keep = False
    if not keep:
        lines.append(b"Connection: close\r\n")
    elif req.minor == 0:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), framing, keep


def interim_head(info: InformationalResponse) -> bytes:
    """A 1xx other than 101, passed on to an HTTP/1.1 client."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (info.status, info.reason)]
    _append_end_to_end(lines, info.headers, info.conn_tokens)
    lines.append(b"\r\n")
    return b"".join(lines)


def switch_head(info: InformationalResponse) -> bytes:
    """A 101, passed on whole: its Connection and Upgrade headers are the switch."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (info.status, info.reason)]
    lines += [b"%s: %s\r\n" % header for header in info.headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def reply(req: Request | None, status: int, text: str, *, keep: bool, headers: bytes = b"") -> bytes:
    """A short plain-text answer from the router itself (`req`: what it answers, if it was parsed)."""
    return answer(req, status, f"{text}\n".encode(), keep=keep, headers=headers)


def answer(req: Request | None, status: int, body: bytes, *, keep: bool, headers: bytes = b"") -> bytes:
    """A plain-text `body` as is, with `headers` (whole lines) added to the head."""
    if not keep:
        conn = b"Connection: close\r\n"
    else:
        conn = b"" if req is not None and req.minor == 1 else b"Connection: keep-alive\r\n"
    length = len(body)
    if req is not None and req.method == b"HEAD":
        body = b""
    return b"%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        _status_line(status),
        length,
        headers,
        conn,
        body,
    )


def _append_end_to_end(lines: list[bytes], headers: Headers, conn_tokens: frozenset[bytes]) -> None:
    drop = _HOP_BY_HOP | conn_tokens if conn_tokens else _HOP_BY_HOP
    for name, value in headers:
        if name.lower() not in drop:
            lines += (name, b": ", value, b"\r\n")


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()
