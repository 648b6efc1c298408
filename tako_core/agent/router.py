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
- Deadlines, all kept by one sweeper task rather than a timer per request: a client connection idle
  between requests (or trickling a head) for IDLE_TIMEOUT is closed; a request body that stalls for
  BODY_TIMEOUT, or is not all in REQUEST_TIMEOUT after it began, gets 408 and the connection closes
  (so does the upstream connection it held).
- Connections are capped overall (from RLIMIT_NOFILE, raised to its hard limit at start, less a
  reserve for the agent's control socket, instances and logs: each client connection may hold an
  upstream one, and a burst of accepts briefly holds more) and per client address (configured
  proxies are exempt); past a cap a new connection gets 503 and is closed.
- While a message is incomplete the router asks Linux for an immediate ACK (TCP_QUICKACK): peers that
  write a head and a body apart with Nagle on would otherwise wait ~40 ms for the delayed ACK.
- Request smuggling: Content-Length with Transfer-Encoding, conflicting lengths, or a
  Transfer-Encoding other than `chunked` are refused (400/501) and the connection is closed (`http1`).
- Upgrades (WebSocket and the like) become a raw byte tunnel after the upstream's 101; the tunnel
  counts as in flight until either side closes. CONNECT is refused (501): this is not a forward proxy.
- Forwarding headers are kept only from `trusted_proxies` (addresses, none by default): see `heads`.
- Trailers of chunked messages are dropped.
- HTTPS (when given `https_port` and `certs`): a second listener, served by the very same code once
  asyncio's TLS transport has done the handshake. The SNI callback swaps in the context holding the
  name's certificate (`certs`); a name without one gets an `unrecognized_name` alert. On the HTTP port
  ACME HTTP-01 challenges are answered from `challenges`, and a request for a host with a certificate
  gets a 308 to its https:// URL; other hosts are proxied over plain HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import logging
import resource
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from tako_core.agent.certs import Certs, server_context
from tako_core.agent.heads import reply
from tako_core.agent.http1 import ParseError, Request, select_backend
from tako_core.agent.proxy import ClientConnection, Proxy
from tako_core.agent.route_table import RouteTable
from tako_core.agent.stream import Stream
from tako_core.agent.upstream_pool import Upstream

__all__ = ["IDLE_TIMEOUT", "MAX_HEAD", "Router", "Upstream"]

log = logging.getLogger("tako.agent")

MAX_HEAD = 64 * 1024  # bytes of request line + headers a client may send
IDLE_TIMEOUT = 75.0  # seconds a client connection may wait between requests (or trickle a head)
BODY_TIMEOUT = 60.0  # seconds a request body may stall (a phone going through a tunnel survives)
REQUEST_TIMEOUT = 900.0  # seconds a request body may take in all (100 MB at ~1 Mbit/s)
MAX_PER_CLIENT = 256  # connections from one address (a browser opens 6 per host)
FD_RESERVE = 256  # file descriptors kept from the router (or half the limit, if that is less)
HANDOVER_IDLE = 1.0  # while handing over, a connection idle this long is closed without a last response
HANDOVER_TIMEOUT = 20.0  # in flight this long after a restart began: cut off (setup waits 30 s in all)
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to complete its TLS handshake
HANDSHAKE_GRACE = 3.0  # seconds a hand-over waits for TLS handshakes under way (new connections wait too)
CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
SYNC_PATH = b"/.well-known/tako/certificate"  # an env's leader hands its certificate to followers
FORWARDED_MARK = b"x-tako-forwarded"  # a challenge request one router forwarded to another
MAX_UNKNOWN_NAMES = 1024  # SNI names without a certificate logged (once each), then no more


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _address(peer: str) -> str:
    """An address as configured or as a socket names it, in one form (IPv4-mapped IPv6 unmapped)."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class _ClientStream(Stream):
    def __init__(self, router: Router, *, tls: bool = False) -> None:
        super().__init__()
        self._router = router
        self.tls = tls
        # When the connection started waiting for its next request head; None while one is served.
        self.idle_since: float | None = asyncio.get_running_loop().time()
        self.client: ClientConnection | None = None
        self.peer = "unknown"
        self.accepted = asyncio.get_running_loop().time()
        if tls:  # accepted, its handshake under way: the router sees it only once that is done
            router._handshaking.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._router._handshaking.discard(self)
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
        body_timeout: float = BODY_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int | None = None,
        max_per_client: int = MAX_PER_CLIENT,
        trusted_proxies: Sequence[str] = (),
        listeners: Sequence[tuple[str, socket.socket]] = (),
        https_port: int | None = None,
        certs: Certs | None = None,
    ) -> None:
        # Already listening ("http" or "https", handed over by the previous agent), else bound here.
        self._listeners = listeners
        self._https_port = https_port
        self.certs = certs
        # ACME HTTP-01: token -> key authorization, filled by whoever orders a certificate.
        self.challenges: dict[str, str] = {}
        # Set by the agent's automatic certificates (autocerts): a follower asks its env's leader
        # for a token it does not hold (token, host); a leader answers the sync path on HTTPS
        # (host, Authorization header) with a JSON body, or None for a 404.
        self.forward_challenge: Callable[[str, str], Awaitable[str | None]] | None = None
        self.certificate_sync: Callable[[str, bytes], bytes | None] | None = None
        self._unknown_names: set[str] = set()
        self._closing = False  # handing over: every connection ends after its next response
        self._host = host
        self._port = port
        self._backend = select_backend(backend)
        self._max_head = max_head
        self._idle_timeout = idle_timeout
        self._body_timeout = body_timeout
        self._request_timeout = request_timeout
        self._max_connections = max_connections  # None: derived from the fd limit at start
        self._max_per_client = max_per_client
        self._trusted = frozenset(map(_address, trusted_proxies))
        self._per_client: dict[str, int] = {}
        self._table = RouteTable()
        self._proxy = Proxy(self._table, self._backend, max_head)
        self._clients: set[_ClientStream] = set()
        # TLS connections accepted whose handshake is not done; a failed one is never "made" and
        # leaves when collected.
        self._handshaking: weakref.WeakSet[_ClientStream] = weakref.WeakSet()
        self._sweeper: asyncio.Task[None] | None = None
        self._servers: list[tuple[str, asyncio.Server]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def backend(self) -> str:
        """The HTTP parser in use: "httptools" or "h11"."""
        return self._backend.name

    @property
    def port(self) -> int:
        return self._bound("http") or self._port

    @property
    def https_port(self) -> int | None:
        return self._bound("https")

    def _bound(self, kind: str) -> int | None:
        sockets = [s for name, server in self._servers if name == kind for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else None

    async def start(self) -> None:
        limit = raise_fd_limit()
        if self._max_connections is None:
            # A third each: client connections, the upstream ones they hold, and a burst of accepts
            # (asyncio accepts up to `backlog` at once; those past the cap are closed right after).
            self._max_connections = max((limit - min(FD_RESERVE, limit // 2)) // 3, 1)
        backlog = min(1024, self._max_connections)
        loop = asyncio.get_running_loop()
        await self._listen("http", self._port, None, backlog)
        if self._https_port is not None:
            try:
                await self._listen("https", self._https_port, self._tls_context(), backlog)
            except OSError as err:  # e.g. port 443 for an agent without root: HTTP keeps serving
                log.error("router: no HTTPS: cannot listen on %s:%d: %s", self._host, self._https_port, err)
        self._sweeper = loop.create_task(self._sweep_idle())

    async def _listen(self, kind: str, port: int, tls: ssl.SSLContext | None, backlog: int) -> None:
        """Serve `kind` on the sockets the previous agent handed over, else on new ones."""
        loop = asyncio.get_running_loop()
        timeout = TLS_HANDSHAKE_TIMEOUT if tls is not None else None

        def stream() -> _ClientStream:
            return _ClientStream(self, tls=tls is not None)

        handed = [sock for name, sock in self._listeners if name == kind]
        for sock in handed:
            server = await loop.create_server(
                stream, sock=sock, backlog=backlog, ssl=tls, ssl_handshake_timeout=timeout
            )
            self._servers.append((kind, server))
        if not handed:
            server = await loop.create_server(
                stream,
                self._host,
                port,
                reuse_address=True,
                backlog=backlog,
                ssl=tls,
                ssl_handshake_timeout=timeout,
            )
            self._servers.append((kind, server))

    def _tls_context(self) -> ssl.SSLContext:
        """The listener's context: it holds no certificate, the SNI callback swaps in the name's own."""
        ctx = server_context()
        ctx.sni_callback = self._sni
        return ctx

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        chosen = self.certs.context_for(name) if self.certs is not None and name else None
        if chosen is None:
            if name not in self._unknown_names and len(self._unknown_names) < MAX_UNKNOWN_NAMES:
                self._unknown_names.add(str(name))
                log.warning("router: TLS handshake for %s refused: no certificate for that name", name)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = chosen
        return None

    async def hand_over(self, timeout: float = HANDOVER_TIMEOUT) -> list[tuple[str, socket.socket]]:  # noqa: ASYNC109
        """Stop accepting and return the listening sockets, for the next agent: connections that
        arrive meanwhile wait in their backlog, none is refused. Every client connection ends after
        its next response, which says `Connection: close` (so no client races a request into a
        connection being closed); one idle for HANDOVER_IDLE gets no next request and is closed; a
        TLS connection still in its handshake is waited for too. Then stop. Each socket comes with
        its kind, "http" or "https"."""
        listeners = [
            (kind, socket.fromfd(s.fileno(), s.family, s.type))
            for kind, v in self._servers
            for s in v.sockets
        ]
        for _, server in self._servers:
            server.close()  # closes its own descriptors; ours keep the sockets and their backlog
        self._closing = True
        # A connection accepted just before is made by a task (asyncio's _accept_connection2), a
        # loop pass or two later: let those run, or it is in neither set below and is reset.
        for _ in range(2):
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        gc.collect()  # failed handshakes' protocols (a cycle with their transport) leave _handshaking
        while (self._clients or self._handshakes_under_way(started)) and loop.time() - started < timeout:
            for conn in list(self._clients):
                if (
                    conn.idle_since is not None
                    and loop.time() - max(conn.idle_since, started) > HANDOVER_IDLE
                ):
                    conn.close()
            await asyncio.sleep(0.02)
        await self.stop()
        return listeners

    def _handshakes_under_way(self, started: float) -> bool:
        """Whether a TLS connection accepted before the hand-over (`started`) may still complete its
        handshake (then it is served its one request, not dropped). Waited for HANDSHAKE_GRACE at
        most: a live client's handshake takes a round trip or two, while one that never completes (a
        scanner, a failed handshake the garbage collector has not swept yet) would hold every new
        connection in the backlog for as long as the wait."""
        now = asyncio.get_running_loop().time()
        if now - started > HANDSHAKE_GRACE:
            return False
        return any(stream.accepted > now - TLS_HANDSHAKE_TIMEOUT for stream in self._handshaking)

    async def stop(self) -> None:
        for _, server in self._servers:
            server.close()
        tasks = list(self._tasks)
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._table.close_idle()  # after the tasks: none of them can pool a connection any more
        for _, server in self._servers:
            await server.wait_closed()
        self._servers = []

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
        """Close client connections past a deadline: one timer for all, none per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(
                min(5.0, self._idle_timeout / 4, self._body_timeout / 4, self._request_timeout / 4)
            )
            now = loop.time()
            idle_cut, body_cut = now - self._idle_timeout, now - self._body_timeout
            request_cut = now - self._request_timeout
            for conn in list(self._clients):
                if conn.idle_since is not None and conn.idle_since < idle_cut:
                    conn.close()
                    continue
                client = conn.client
                if client is None or client.body_since is None:
                    continue
                waiting = client.waiting_since
                if client.body_since < request_cut or (waiting is not None and waiting < body_cut):
                    conn.write(reply(None, 408, "the request body took too long", keep=False))
                    conn.close()

    def _accept(self, stream: _ClientStream) -> None:
        transport = stream.transport
        peername = transport.get_extra_info("peername") if transport else None
        peer = stream.peer = _address(str(peername[0])) if peername else "unknown"
        count = self._per_client.get(peer, 0)
        assert self._max_connections is not None
        if len(self._clients) >= self._max_connections or (
            count >= self._max_per_client and peer not in self._trusted
        ):
            stream.write(reply(None, 503, "too many connections", keep=False))
            stream.close()
            return
        self._per_client[peer] = count + 1
        self._clients.add(stream)
        task = asyncio.get_running_loop().create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: _ClientStream) -> None:
        parser = self._backend.request_parser(self._max_head)
        client = stream.client = ClientConnection(
            stream, parser, stream.peer, stream.peer in self._trusted, tls=stream.tls
        )
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
                req = dataclasses.replace(ev, keep_alive=False) if self._closing else ev
                if stream.tls:
                    local = await self._sync(client, req) if self._is_sync(req) else None
                else:
                    local = await self._plain_http(client, req)
                if not (await self._proxy.exchange(client, req) if local is None else local):
                    return
        except ParseError as e:
            client.reply(req, e.status, str(e), keep=False)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug must cost one connection, never the router
            log.exception("router: unexpected error serving a client")
        finally:
            self._clients.discard(stream)
            left = self._per_client.pop(stream.peer) - 1
            if left:
                self._per_client[stream.peer] = left
            stream.close()

    # --- the HTTP port next to HTTPS ---------------------------------------------------------------------

    async def _plain_http(self, client: ClientConnection, req: Request) -> bool | None:
        """Answer an ACME challenge or redirect to HTTPS (whether the connection stays open); None:
        proxy the request as it is."""
        path = req.target.split(b"?", 1)[0]
        if req.method in (b"GET", b"HEAD") and path.startswith(CHALLENGE_PREFIX):
            token = path[len(CHALLENGE_PREFIX) :].decode("ascii", "replace")
            forwarded = any(name.lower() == FORWARDED_MARK for name, _ in req.headers)
            # A forwarded request is never forwarded again: two routers cannot ask each other forever.
            name = "" if forwarded or req.host is None else _host_name(req.host).decode("ascii", "replace")
            authorization = await self.challenge(token, name)
            if authorization is None:
                return await self._proxy.refuse(client, req, 404, "no such ACME challenge")
            return await self._proxy.refuse(client, req, 200, "", body=authorization.encode())
        if path == SYNC_PATH:  # the certificate sync is HTTPS only, and never an app's
            return await self._proxy.refuse(client, req, 404, "not found")
        https_port = self.https_port
        if self.certs is None or https_port is None or req.host is None:
            return None
        host = _host_name(req.host)
        if self.certs.context_for(host.decode("ascii", "replace")) is None:
            return None
        target = req.target
        if not target.startswith(b"/"):  # absolute-form: keep its path and query only
            parts = urlsplit(target)
            target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        port = b"" if https_port == 443 else b":%d" % https_port
        location = b"https://" + host + port + target
        return await self._proxy.refuse(
            client, req, 308, "moved to HTTPS", headers=b"Location: " + location + b"\r\n"
        )

    async def challenge(self, token: str, host: str = "") -> str | None:
        """The key authorization for an HTTP-01 `token`: this agent's own, else (a follower of an
        env naming `host`; "" never forwards) what the env's leader answers."""
        answer = self.challenges.get(token)
        if answer is None and host and self.forward_challenge is not None:
            answer = await self.forward_challenge(token, host.lower())
        return answer

    def _is_sync(self, req: Request) -> bool:
        return self.certificate_sync is not None and req.target.split(b"?", 1)[0] == SYNC_PATH

    async def _sync(self, client: ClientConnection, req: Request) -> bool:
        """The leader's side of the certificate sync (HTTPS only, never proxied to an app)."""
        assert self.certificate_sync is not None
        auth = next((value for name, value in req.headers if name.lower() == b"authorization"), b"")
        host = _host_name(req.host).decode("ascii", "replace").lower() if req.host else ""
        body = self.certificate_sync(host, auth) if req.method == b"GET" else None
        if body is None:
            return await self._proxy.refuse(client, req, 404, "not found")
        return await self._proxy.refuse(client, req, 200, "", body=body)


def _host_name(host: bytes) -> bytes:
    """A Host header's name without its port."""
    if host.startswith(b"["):
        return host.split(b"]", 1)[0] + b"]"
    return host.rsplit(b":", 1)[0] if b":" in host else host
