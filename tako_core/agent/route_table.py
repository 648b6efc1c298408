"""The router's routing table: which upstream serves a request for a Host, and what is in flight where.

Pure logic, no sockets. Routes are replaced whole and synchronously, so each change is atomic for the
event loop: a request is routed either before a change or after it. An upstream's requests are counted
from the choice to the end of the response, so a rollout can wait for an old instance to drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tako_core.agent.compat import WaitTimeout
from tako_core.agent.upstream_pool import Upstream, UpstreamPool

_CACHE_MAX = 4096  # Host values are client-chosen: keep the lookup memo bounded


def host_key(host: bytes) -> bytes:
    """Host header → lookup key: lower case, port and trailing dot stripped ([v6] literals kept)."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.partition(b":")[0].rstrip(b".")


def _route_name(host: str) -> bytes:
    """A configured route host → lookup key; `*.example.com` keeps its wildcard label."""
    host = host.strip().lower()
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    encoded = name.encode() if name.isascii() else name.encode("idna")
    return b"*." + host_key(encoded) if wildcard else host_key(encoded)


class UpstreamState:
    """One upstream as the table knows it: requests in flight, drain waiters, whether any route uses it."""

    __slots__ = ("authority", "drained", "inflight", "pool", "routed", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.authority = f"{upstream.host}:{upstream.port}".encode()
        self.inflight = 0
        self.routed = False
        self.drained: asyncio.Event | None = None
        self.pool = UpstreamPool(upstream)


class Route:
    """Host names (lookup keys) served by upstreams, chosen round robin per request."""

    __slots__ = ("hosts", "key", "next", "upstreams")

    def __init__(self, key: str, hosts: tuple[bytes, ...], upstreams: tuple[UpstreamState, ...]) -> None:
        self.key = key
        self.hosts = hosts
        self.upstreams = upstreams
        self.next = 0

    def pick(self) -> UpstreamState | None:
        """The next upstream, round robin; None when the route has none."""
        ups = self.upstreams
        if not ups:
            return None
        i = self.next
        self.next = i + 1
        return ups[i % len(ups)]


class RouteTable:
    """Routes by key (one per app/env), looked up by Host; upstreams known while routed or in flight."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._exact: dict[bytes, Route] = {}
        self._wild: list[tuple[bytes, Route]] = []  # (".example.com", route), longest suffix first
        self._only: Route | None = None  # the one route without hosts: it takes any other Host
        self._cache: dict[bytes, Route | None] = {}
        self._states: dict[Upstream, UpstreamState] = {}

    def set_route(self, key: str, hosts: Sequence[str], upstreams: Sequence[Upstream]) -> None:
        """Route `hosts` (exact names or `*.example.com`) to `upstreams`, replacing the route `key`.
        Requests already forwarded finish where they are; every later request uses the new upstreams."""
        names = tuple(_route_name(h) for h in hosts)
        states = tuple(self._state(u) for u in dict.fromkeys(upstreams))
        routes = dict(self._routes)
        routes[key] = Route(key, names, states)
        self._install(routes)

    def remove_route(self, key: str) -> None:
        routes = dict(self._routes)
        if routes.pop(key, None) is not None:
            self._install(routes)

    def lookup(self, host: bytes | None) -> Route | None:
        """The route for a request's Host header (None: the request has none)."""
        if host is None:
            return self._only
        cache = self._cache
        if host in cache:
            return cache[host]
        name = host_key(host)
        route = self._exact.get(name)
        if route is None:
            for suffix, candidate in self._wild:
                if name.endswith(suffix) and len(name) > len(suffix):
                    route = candidate
                    break
            else:
                route = self._only
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[host] = route
        return route

    def begin(self, state: UpstreamState) -> None:
        """A request goes to `state`'s upstream; `end` must follow."""
        state.inflight += 1

    def end(self, state: UpstreamState) -> None:
        state.inflight -= 1
        if state.inflight == 0:
            event, state.drained = state.drained, None
            if event is not None:
                event.set()
            if not state.routed and self._states.get(state.upstream) is state:
                state.pool.close_idle()
                del self._states[state.upstream]

    def inflight(self, upstream: Upstream) -> int:
        state = self._states.get(upstream)
        return state.inflight if state is not None else 0

    async def drain(self, upstream: Upstream, timeout: float) -> bool:  # noqa: ASYNC109 - the contract
        """Wait until no request is being proxied to `upstream` (True) or `timeout` passed (False);
        then close its idle pooled connections."""
        state = self._states.get(upstream)
        if state is None:
            return True
        done = True
        if state.inflight:
            if state.drained is None:
                state.drained = asyncio.Event()
            try:
                await asyncio.wait_for(state.drained.wait(), timeout)
            except WaitTimeout:
                done = False
        state.pool.close_idle()
        return done

    def close_idle(self) -> None:
        """Close every upstream's idle pooled connections (the router is stopping)."""
        for state in self._states.values():
            state.pool.close_idle()

    def _state(self, upstream: Upstream) -> UpstreamState:
        state = self._states.get(upstream)
        if state is None:
            state = self._states[upstream] = UpstreamState(upstream)
        return state

    def _install(self, routes: dict[str, Route]) -> None:
        exact: dict[bytes, Route] = {}
        wild: list[tuple[bytes, Route]] = []
        routed: set[UpstreamState] = set()
        for route in routes.values():
            routed.update(route.upstreams)
            for name in route.hosts:
                if name.startswith(b"*."):
                    wild.append((name[1:], route))
                else:
                    exact.setdefault(name, route)
        wild.sort(key=lambda item: -len(item[0]))
        self._routes = routes
        self._exact = exact
        self._wild = wild
        # Any Host reaches an app only when it asked for that (an env without `route`), and only one.
        catch_all = [route for route in routes.values() if not route.hosts]
        self._only = catch_all[0] if len(catch_all) == 1 else None
        self._cache = {}
        for state in list(self._states.values()):
            state.routed = state in routed
            if not state.routed:
                state.pool.close_idle()  # no new request goes there; in-flight ones close theirs when done
                if state.inflight == 0 and state.drained is None:
                    del self._states[state.upstream]
