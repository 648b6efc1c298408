"""A follower's requests to its env's leader (agent/autocerts.py): an ACME challenge it does not
hold, over the leader's HTTP port, and the certificate, over HTTPS to a leader whose key matches the
pin. Each is one GET with `Connection: close`, bounded in time (FETCH_TIMEOUT) and size."""

from __future__ import annotations

import asyncio
import hmac
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tako_core.agent.acme_crypto import AcmeError, cert_pin
from tako_core.agent.compat import WaitTimeout
from tako_core.agent.router import CHALLENGE_PREFIX, FORWARDED_MARK, SYNC_PATH

FETCH_TIMEOUT = 5.0  # seconds for one request to the leader (connect, TLS, answer)
MAX_CHALLENGE = 4096  # bytes of a forwarded challenge answer
MAX_SYNC = 256 * 1024  # bytes of the leader's certificate answer
ERROR_CHARS = 300


class SyncError(Exception):
    """Fetching from the leader failed; the message is safe to show (no token, no key)."""


@dataclass(frozen=True)
class LeaderRef:
    """Where a follower finds its env's leader, and how it recognises it."""

    host: str
    http_port: int
    https_port: int
    token: str = field(repr=False)
    pin: str


async def fetch_certificate(leader: LeaderRef, name: str) -> tuple[str, str]:
    """The leader's chain and key, over TLS to a leader whose key matches the pin."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin below is the trust, not a CA

    async def verify(writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        try:
            pin = await asyncio.to_thread(cert_pin, der) if der else ""
        except AcmeError as err:
            raise SyncError(f"cannot read the leader's certificate: {err}") from None
        if not hmac.compare_digest(pin, leader.pin):
            raise SyncError(f"the leader at {leader.host}:{leader.https_port} presents another key")

    status, body = await _get(
        leader.host,
        leader.https_port,
        SYNC_PATH,
        name,
        [b"Authorization: Bearer " + leader.token.encode()],
        MAX_SYNC,
        context=context,
        before=verify,
    )
    if status != 200:
        raise SyncError(f"the leader answered HTTP {status}")
    try:
        doc = json.loads(body)
        return str(doc["chain"]), str(doc["key"])
    except (ValueError, KeyError, TypeError):
        raise SyncError("the leader's answer is not a certificate") from None


async def fetch_challenge(leader: LeaderRef, token: str, host: str) -> str | None:
    """The leader's key authorization for `token` (None: it has none); marked as forwarded, so the
    leader never forwards it again."""
    status, body = await _get(
        leader.host,
        leader.http_port,
        CHALLENGE_PREFIX + token.encode(),
        host,
        [FORWARDED_MARK + b": 1"],
        MAX_CHALLENGE,
    )
    return body.decode("ascii", "replace") if status == 200 else None


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "…"


async def _get(
    host: str,
    port: int,
    path: bytes,
    name: str,
    headers: list[bytes],
    limit: int,
    *,
    context: ssl.SSLContext | None = None,
    before: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None,
) -> tuple[int, bytes]:
    """One GET (Connection: close): its status and body, at most `limit` bytes, in FETCH_TIMEOUT."""

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=name if context is not None else None
        )
        try:
            if before is not None:
                await before(writer)
            head = [b"GET " + path + b" HTTP/1.1", b"Host: " + name.encode("idna"), b"Connection: close"]
            writer.write(b"\r\n".join([*head, *headers]) + b"\r\n\r\n")
            data = b""
            while len(data) <= limit + 8192:  # the head and the body, bounded
                more = await reader.read(65536)
                if not more:
                    break
                data += more
        finally:
            writer.close()
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        parts = head_bytes.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise SyncError("the leader's answer is not HTTP")
        if len(body) > limit:
            raise SyncError(f"the leader's answer is over {limit} bytes")
        return int(parts[1]), body

    try:
        return await asyncio.wait_for(exchange(), FETCH_TIMEOUT)
    except WaitTimeout:  # first: from 3.11 on it is the builtin TimeoutError, an OSError
        raise SyncError(f"the leader at {host}:{port} did not answer within {FETCH_TIMEOUT:g} s") from None
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as err:
        raise SyncError(f"cannot reach the leader at {host}:{port}: {_short(err)}") from None
