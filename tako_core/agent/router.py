"""The agent's HTTP/1.1 router: Host-based routing to app instances, switched atomically during a rollout.

Each client connection is served by one task that handles its requests in order (pipelining falls out
of that): parse a request head, pick an upstream of the matching route (`route_table`: round robin,
chosen per request, so the request after a `set_route` goes to the new instances even on the same
keep-alive connection), forward the request over a pooled keep-alive upstream connection and stream
the response back (`proxy`).

Choices worth knowing:
- Connecting fails → 502, except that a request without a body and with an idempotent method is tried
  once more on the route's next upstream; a pooled connection the app closed before answering is
  replayed the same way on a fresh one.
- `Expect: 100-continue` is answered by the router itself once it has an upstream to send the body to.
- Client connections idle between requests (or trickling a head) for IDLE_TIMEOUT are closed, by one
  sweeper task rather than a timer per request.
- While a message is incomplete the router asks Linux for an immediate ACK (TCP_QUICKACK): peers that
  write a head and a body apart with Nagle on would otherwise wait ~40 ms for the delayed ACK.
- Request smuggling: Content-Length with Transfer-Encoding, conflicting lengths, or a
  Transfer-Encoding other than `chunked` are refused (400/501) and the connection is closed (`http1`).
- Upgrades (WebSocket and the like) become a raw byte tunnel after the upstream's 101; the tunnel
  counts as in flight until either side closes. CONNECT is refused (501): this is not a forward proxy.
- X-Forwarded-For/-Proto/-Host: a loopback peer (a local TLS terminator such as Caddy) is trusted and
  its values are kept (the peer is appended to X-Forwarded-For); from anyone else they are replaced.
- Trailers of chunked messages are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from tako_core.agent.http1 import ParseError, Request, select_backend
from tako_core.agent.proxy import ClientConnection, Proxy
from tako_core.agent.route_table import RouteTable
from tako_core.agent.stream import Stream
from tako_core.agent.upstream_pool import Upstream

__all__ = ["IDLE_TIMEOUT", "MAX_HEAD", "Router", "Upstream"]

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024  # bytes of request line + headers a client may send
IDLE_TIMEOUT = 75.0  # seconds a client connection may wait between requests (or trickle a head)


class _ClientStream(Stream):
    def __init__(self, router: Router) -> None:
        super().__init__()
        self._router = router
        # When the connection started waiting for its next request head; None while one is served.
        self.idle_since: float | None = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._router._accept(self)


class Router:
    """HTTP/1.1 reverse proxy routing by Host to the upstreams given by `set_route`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        backend: str | None = None,
        max_head: int = MAX_HEAD,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._host = host
        self._port = port
        self._backend = select_backend(backend)
        self._max_head = max_head
        self._idle_timeout = idle_timeout
        self._table = RouteTable()
        self._proxy = Proxy(self._table, self._backend, max_head)
        self._clients: set[_ClientStream] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def backend(self) -> str:
        """The HTTP parser in use: "httptools" or "h11"."""
        return self._backend.name

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientStream(self), self._host, self._port, reuse_address=True, backlog=1024
        )
        self._sweeper = loop.create_task(self._sweep_idle())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._table.close_idle()  # after the tasks: none of them can pool a connection any more
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # --- routes (synchronous, so each change is atomic for the event loop) -------------------------

    def set_route(self, key: str, hosts: Sequence[str], upstreams: Sequence[Upstream]) -> None:
        """Route `hosts` (exact names or `*.example.com`) to `upstreams`, replacing the route `key`.
        Requests already forwarded finish where they are; every later request uses the new upstreams."""
        self._table.set_route(key, hosts, upstreams)

    def remove_route(self, key: str) -> None:
        self._table.remove_route(key)

    def inflight(self, upstream: Upstream) -> int:
        return self._table.inflight(upstream)

    async def drain(self, upstream: Upstream, timeout: float) -> bool:  # noqa: ASYNC109 - the contract
        """Wait until no request is being proxied to `upstream` (True) or `timeout` passed (False);
        then close its idle pooled connections."""
        return await self._table.drain(upstream, timeout)

    # --- serving ------------------------------------------------------------------------------------

    async def _sweep_idle(self) -> None:
        """Close client connections idle past the timeout: one timer for all, none per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self._idle_timeout / 4))
            cutoff = loop.time() - self._idle_timeout
            for conn in list(self._clients):
                if conn.idle_since is not None and conn.idle_since < cutoff:
                    conn.close()

    def _accept(self, stream: _ClientStream) -> None:
        self._clients.add(stream)
        task = asyncio.get_running_loop().create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: _ClientStream) -> None:
        client = ClientConnection(stream, self._backend.request_parser(self._max_head))
        req: Request | None = None
        try:
            loop = asyncio.get_running_loop()
            while True:
                req = None
                stream.idle_since = loop.time()
                ev = await client.next()
                stream.idle_since = None
                if not isinstance(ev, Request):
                    return
                req = ev
                if not await self._proxy.exchange(client, req):
                    return
        except ParseError as e:
            client.reply(req, e.status, str(e), keep=False)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug must cost one connection, never the router
            log.exception("router: unexpected error serving a client")
        finally:
            self._clients.discard(stream)
            stream.close()
