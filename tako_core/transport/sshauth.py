"""Public-key login in one round trip instead of three.

A stock SSH client logs in with three exchanges after the key exchange: a `none` request (to learn
which methods the server allows), a public-key *query* (would you take this key?), then the signed
request. RFC 4252 makes the first two optional: a client may send a signed request straight away,
and a server that does not take the key answers with the same failure a query gets, listing its
methods. So tako starts with `publickey` and signs the first request. At 100 ms between client and
server that is 0.2 s off every connection, and a deploy opens one per server.

A key on a security token (`sk-*`) is still queried first: signing needs a touch, which must not be
asked for a key the server is about to refuse. asyncssh has no option for either, so this swaps its
client-side public-key method for a subclass (asyncssh's auth module registers one class per
method) and sets the first method when a connection is made, through the `client_factory` hook.
Both touch asyncssh internals: tests/test_transport.py checks with a real sshd's log that a login
takes one request, so an asyncssh release that moves them shows there; and where they are not
as expected, tako logs in as a stock client does rather than not at all.
"""

from __future__ import annotations

import functools
from typing import Any

from tako_core.transport.sshlib import asyncssh

_PUBLICKEY = b"publickey"


@functools.cache
def client_factory() -> type[Any] | None:
    """The `client_factory` for `asyncssh.connect`; installs the signed-first method on first use.
    None when this asyncssh lacks the internals it uses."""
    auth: Any = asyncssh.auth
    base = getattr(auth, "_ClientPublicKeyAuth", None)
    handlers = getattr(auth, "_client_auth_handlers", None)
    if base is None or not hasattr(base, "_send_signed_request") or not isinstance(handlers, dict):
        return None

    class SignedFirst(base):  # type: ignore[misc,valid-type]
        async def _start(self) -> None:
            self._keypair = await self._conn.public_key_auth_requested()
            if self._keypair is None:
                self._conn.try_next_auth(next_method=True)
            elif self._keypair.algorithm.startswith(b"sk-"):
                await self.send_request(
                    auth.Boolean(False),
                    auth.String(self._keypair.algorithm),
                    auth.String(self._keypair.public_data),
                )
            else:
                await self._send_signed_request()

    handlers[_PUBLICKEY] = SignedFirst

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn: Any) -> None:
            conn._auth_methods = [_PUBLICKEY]  # rather than [b"none"]: no probe for the methods

    return Client
