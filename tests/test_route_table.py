"""The router's routing table as pure logic: Host → route → upstream, route changes, in-flight counts.

No sockets: nothing here opens a connection (the pools stay empty).
"""

from __future__ import annotations

import asyncio

import pytest

from tako_core.agent.route_table import RouteTable, UpstreamState, host_key
from tako_core.agent.upstream_pool import Upstream

A, B, C = Upstream("127.0.0.1", 8001), Upstream("127.0.0.1", 8002), Upstream("127.0.0.1", 8003)


def chosen(table: RouteTable, host: bytes | None, times: int = 1) -> list[Upstream | None]:
    """The upstreams `times` requests for `host` would go to."""
    out: list[Upstream | None] = []
    for _ in range(times):
        route = table.lookup(host)
        state = route.pick() if route is not None else None
        out.append(state.upstream if state is not None else None)
    return out


def state_of(table: RouteTable, host: bytes) -> UpstreamState:
    route = table.lookup(host)
    assert route is not None
    state = route.pick()
    assert state is not None
    return state


@pytest.mark.parametrize(
    ("host", "key"),
    [
        (b"A.Test", b"a.test"),
        (b"a.test:8080", b"a.test"),
        (b"a.test.", b"a.test"),
        (b" a.test ", b"a.test"),
        (b"[::1]:8080", b"[::1]"),
        (b"[::1]", b"[::1]"),
        (b"10.0.0.1:80", b"10.0.0.1"),
    ],
)
def test_host_key(host: bytes, key: bytes) -> None:
    assert host_key(host) == key


def test_exact_names_then_the_longest_wildcard() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test", "xn--caf-dma.test"], [A])
    table.set_route("wild", ["*.test"], [B])
    table.set_route("deeper", ["*.b.test"], [C])
    assert chosen(table, b"A.TEST:443") == [A]
    assert chosen(table, b"x.test") == [B]
    assert chosen(table, b"x.b.test") == [C]
    assert chosen(table, b"b.test") == [B]  # *.b.test needs a label before .b.test
    assert chosen(table, b"test") == [None]  # *.test too
    assert chosen(table, b"other.example") == [None]
    assert chosen(table, None) == [None]  # no Host (HTTP/1.0) and more than one route


def test_configured_names_are_normalized() -> None:
    table = RouteTable()
    table.set_route("a", ["  A.Test  ", "café.test", "*.Wild.Test"], [A])
    table.set_route("b", ["b.test"], [B])
    assert chosen(table, b"a.test") == [A]
    assert chosen(table, b"xn--caf-dma.test") == [A]  # an IDN route matches its A-label Host
    assert chosen(table, b"x.wild.test") == [A]


def test_only_a_route_without_hosts_takes_any_host() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    assert chosen(table, b"evil.attacker.test") == [None]  # the only route, but it named its hosts
    assert chosen(table, None) == [None]
    table.set_route("b", [], [B])  # an env without `route` asked for any Host
    assert chosen(table, b"10.0.0.1:80") == [B]
    assert chosen(table, None) == [B]
    assert chosen(table, b"a.test") == [A]
    table.set_route("c", [], [C])
    assert chosen(table, b"10.0.0.1:80") == [None]  # two such routes: neither takes it
    table.remove_route("c")
    assert chosen(table, b"10.0.0.1:80") == [B]


def test_round_robin_over_distinct_upstreams() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A, B, A, C])  # a repeated upstream counts once
    assert chosen(table, b"a.test", 6) == [A, B, C, A, B, C]


def test_a_route_without_upstreams_picks_none() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [])
    route = table.lookup(b"a.test")
    assert route is not None
    assert route.pick() is None


def test_a_change_applies_to_the_next_lookup_even_for_a_memoized_host() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    assert chosen(table, b"a.test") == [A]  # now memoized
    table.set_route("a", ["a.test"], [B])
    assert chosen(table, b"a.test", 2) == [B, B]
    table.set_route("a", ["other.test"], [B])
    table.set_route("c", ["c.test"], [C])
    assert chosen(table, b"a.test") == [None]
    table.remove_route("a")
    table.remove_route("a")  # removing a missing route changes nothing
    assert chosen(table, b"c.test") == [C]


def test_memo_of_hosts_stays_bounded() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    table.set_route("b", ["b.test"], [B])
    for i in range(10_000):  # client-chosen Host values
        assert table.lookup(b"h%d.test" % i) is None
    assert len(table._cache) <= 4096
    assert chosen(table, b"b.test") == [B]


def test_inflight_counts_outlive_the_route() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    old = state_of(table, b"a.test")
    table.begin(old)
    table.begin(old)
    table.set_route("a", ["a.test"], [B])  # A leaves every route with two requests in flight
    assert table.inflight(A) == 2
    assert not old.routed
    table.end(old)
    assert table.inflight(A) == 1
    table.end(old)
    assert table.inflight(A) == 0
    table.set_route("a", ["a.test"], [A])  # routed again: counted afresh
    assert state_of(table, b"a.test") is not old
    assert table.inflight(B) == 0
    assert table.inflight(C) == 0  # never routed


def test_an_upstream_in_two_routes_shares_one_count() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    table.set_route("b", ["b.test"], [A, B])
    table.begin(state_of(table, b"a.test"))
    table.begin(state_of(table, b"b.test"))  # A again: round robin starts there
    assert table.inflight(A) == 2
    table.remove_route("a")
    assert state_of(table, b"b.test").routed  # still in route b


async def test_drain_waits_for_the_last_request() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    assert await table.drain(A, 0.01) is True  # nothing in flight
    assert await table.drain(B, 0.01) is True  # never routed
    state = state_of(table, b"a.test")
    table.begin(state)
    table.begin(state)
    table.set_route("a", ["a.test"], [B])
    drain = asyncio.create_task(table.drain(A, 5.0))
    await asyncio.sleep(0)
    table.end(state)
    await asyncio.sleep(0)
    assert not drain.done()  # one request is still in flight
    table.end(state)
    assert await asyncio.wait_for(drain, 1.0) is True


async def test_drain_times_out_and_can_be_retried() -> None:
    table = RouteTable()
    table.set_route("a", ["a.test"], [A])
    state = state_of(table, b"a.test")
    table.begin(state)
    table.set_route("a", ["a.test"], [B])
    assert await table.drain(A, 0.05) is False
    assert table.inflight(A) == 1  # the table still knows A after the timeout
    waiting = asyncio.create_task(table.drain(A, 5.0))
    await asyncio.sleep(0)
    table.end(state)
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert table.inflight(A) == 0
