"""The router's HTTPS listener and its HTTP port next to it: real sockets, real TLS, certificates from
a test CA made with the `openssl` command (tests/tlskit.py)."""

from __future__ import annotations

import asyncio
import json
import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tako_core.agent.certs import Certs
from tako_core.agent.router import Router, Upstream
from tests.agentkit.kit import Load
from tests.test_router import App, Client, raw_exchange
from tests.test_router import apps as apps
from tests.tlskit import Pair, TestCA

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def shop(ca: TestCA) -> Pair:
    return ca.leaf("shop.test", "*.shop.test")


def install(certs: Certs, key: str, pair: Pair) -> None:
    certs.install(key, pair.chain.read_text(), pair.key.read_text())


@pytest.fixture
async def router(tmp_path: Path, shop: Pair) -> AsyncIterator[Router]:
    certs = Certs(tmp_path / "tls")
    install(certs, "shop/prod", shop)
    r = Router("127.0.0.1", 0, https_port=0, certs=certs)
    await r.start()
    yield r
    await r.stop()


def trusting(ca: TestCA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def https(router: Router, ca: TestCA, name: str) -> Client:
    assert router.https_port
    return await Client(router.https_port, trusting(ca), name).open()


async def test_https_reaches_the_app_with_forwarded_proto_https_over_keep_alive(
    router: Router, ca: TestCA, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    router.set_route("shop/prod", ["shop.test", "*.shop.test"], [a.upstream])
    client = await https(router, ca, "www.shop.test")
    try:
        assert client.writer is not None
        tls = client.writer.get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        first = await client.request(target="/headers", host="www.shop.test")
        seen = json.loads(first.body)
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-host"] == "www.shop.test"
        second = await client.request(host="www.shop.test")  # same connection
        assert second.body == b"a"
        assert a.connections == 1
    finally:
        client.close()


async def test_a_client_cannot_claim_https_over_plain_http(
    router: Router, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    router.set_route("other", ["plain.test"], [a.upstream])
    client = await Client(router.port).open()
    try:
        reply = await client.request(
            target="/headers", host="plain.test", headers=[("X-Forwarded-Proto", "https")]
        )
        assert json.loads(reply.body)["x-forwarded-proto"] == "http"
    finally:
        client.close()


async def test_a_name_without_certificate_fails_the_handshake_and_the_router_lives_on(
    router: Router, ca: TestCA, apps: Callable[[str], App], caplog: pytest.LogCaptureFixture
) -> None:
    a = await apps("a").start()
    router.set_route("shop/prod", ["shop.test"], [a.upstream])
    for _ in range(3):
        # The alert (unrecognized_name), or a reset when the router's close overtakes it.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await https(router, ca, "unknown.test")
    assert sum("unknown.test" in r.getMessage() for r in caplog.records) == 1  # logged once
    client = await https(router, ca, "shop.test")
    try:
        assert (await client.request(host="shop.test")).body == b"a"
    finally:
        client.close()


async def test_tls_1_1_is_refused(router: Router, ca: TestCA) -> None:
    ctx = trusting(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # what this test is about
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert router.https_port
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", router.https_port, ssl=ctx, server_hostname="shop.test")


async def test_http_port_redirects_hosts_with_a_certificate_and_proxies_the_others(
    router: Router, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    router.set_route("shop/prod", ["shop.test"], [a.upstream])
    router.set_route("plain", ["plain.test"], [a.upstream])
    client = await Client(router.port).open()
    try:
        moved = await client.request(target="/cart/1?x=1&y=%20", host="shop.test:8080")
        assert moved.status == 308
        assert moved.headers["location"] == f"https://shop.test:{router.https_port}/cart/1?x=1&y=%20"
        assert (await client.request(host="plain.test")).body == b"a"  # same connection, kept alive
        assert [target for _, target, _ in a.requests] == ["/"]
    finally:
        client.close()
    raw = await raw_exchange(
        router.port, b"GET http://shop.test/p?q=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
    )
    assert f"Location: https://shop.test:{router.https_port}/p?q=1\r\n".encode() in raw


async def test_acme_challenges_are_answered_on_the_http_port_for_any_host(router: Router) -> None:
    router.challenges["tok-1"] = "tok-1.thumbprint"
    client = await Client(router.port).open()
    try:
        found = await client.request(target="/.well-known/acme-challenge/tok-1", host="shop.test")
        assert (found.status, found.body) == (200, b"tok-1.thumbprint")
        missing = await client.request(target="/.well-known/acme-challenge/nope", host="anything.test")
        assert missing.status == 404
    finally:
        client.close()


async def test_a_token_it_lacks_is_asked_of_the_leader_once_never_twice(router: Router) -> None:
    asked: list[tuple[str, str]] = []

    async def leader(token: str, host: str) -> str | None:
        asked.append((token, host))
        return f"{token}.from-the-leader"

    router.forward_challenge = leader
    client = await Client(router.port).open()
    try:
        found = await client.request(target="/.well-known/acme-challenge/tok-2", host="Shop.Test:80")
        assert (found.status, found.body) == (200, b"tok-2.from-the-leader")
        again = await client.request(
            target="/.well-known/acme-challenge/tok-3", host="shop.test", headers=[("X-Tako-Forwarded", "1")]
        )
        assert again.status == 404  # forwarded once already: a loop between two routers ends here
    finally:
        client.close()
    assert asked == [("tok-2", "shop.test")]


async def test_the_certificate_sync_path_is_https_only_and_never_reaches_an_app(
    router: Router, ca: TestCA, apps: Callable[[str], App]
) -> None:
    a = apps("a")
    await a.start()
    router.set_route("shop", ["shop.test"], [a.upstream])
    seen: list[tuple[str, bytes]] = []

    def sync(host: str, authorization: bytes) -> bytes | None:
        seen.append((host, authorization))
        return b'{"chain": "c"}' if authorization == b"Bearer right" else None

    router.certificate_sync = sync
    path = "/.well-known/tako/certificate"
    client = await https(router, ca, "shop.test")
    try:
        good = await client.request(
            target=path, host="shop.test", headers=[("Authorization", "Bearer right")]
        )
        assert (good.status, good.body) == (200, b'{"chain": "c"}')
        wrong = await client.request(target=path, host="shop.test", headers=[("Authorization", "Bearer no")])
        assert wrong.status == 404
    finally:
        client.close()
    plain = await Client(router.port).open()
    try:
        over_http = await plain.request(
            target=path, host="plain.test", headers=[("Authorization", "Bearer right")]
        )
        assert over_http.status == 404
    finally:
        plain.close()
    assert seen == [("shop.test", b"Bearer right"), ("shop.test", b"Bearer no")]
    assert a.requests == []


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ],
    ids=["cl-and-te", "two-lengths", "gzip-te"],
)
async def test_smuggling_is_refused_over_tls_too(
    router: Router, ca: TestCA, apps: Callable[[str], App], request_bytes: bytes, status: int
) -> None:
    a = await apps("a").start()
    router.set_route("shop/prod", ["shop.test"], [a.upstream])
    assert router.https_port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", router.https_port, ssl=trusting(ca), server_hostname="shop.test"
    )
    try:
        writer.write(request_bytes)
        raw = await asyncio.wait_for(reader.read(-1), 5)
    except ssl.SSLError:  # the router closes without close_notify once it answered: fine
        raw = b""
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:80]
    assert a.requests == []


async def test_a_certificate_swap_under_keep_alive_load_fails_no_request(
    router: Router, ca: TestCA, apps: Callable[[str], App]
) -> None:
    assert router.certs is not None
    assert router.https_port
    a = await apps("a").start()
    router.set_route("shop/prod", ["shop.test"], [a.upstream])
    load = Load(router.https_port, "shop.test", connections=4, max_seconds=20, tls=trusting(ca))
    load.start()
    await asyncio.sleep(0.5)
    renewed = ca.leaf("shop.test", "*.shop.test", days=20)
    install(router.certs, "shop/prod", renewed)
    after = len(load.samples)
    await asyncio.sleep(0.5)
    await load.stop()
    assert load.failed == []
    assert load.errors == []
    assert len(load.samples) > after > 0  # requests went on over the connections made before the swap
    # A new handshake gets the new certificate.
    _, writer = await asyncio.open_connection(
        "127.0.0.1", router.https_port, ssl=trusting(ca), server_hostname="shop.test"
    )
    try:
        leaf = renewed.chain.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
            leaf
        )
    finally:
        writer.close()


async def test_the_https_socket_is_handed_over(
    router: Router, tmp_path: Path, ca: TestCA, apps: Callable[[str], App]
) -> None:
    a = await apps("a").start()
    https_port = router.https_port
    listeners = await router.hand_over(timeout=1)
    assert sorted(kind for kind, _ in listeners) == ["http", "https"]
    follower = Router("127.0.0.1", 1, https_port=1, certs=router.certs, listeners=listeners)
    await follower.start()
    try:
        assert follower.https_port == https_port
        follower.set_route("shop/prod", ["shop.test"], [a.upstream])
        client = await https(follower, ca, "shop.test")
        try:
            assert (await client.request(host="shop.test")).body == b"a"
        finally:
            client.close()
    finally:
        await follower.stop()


async def test_a_tunnel_over_tls_ends_when_the_app_closes_it(router: Router, ca: TestCA) -> None:
    """TLS has no half-close: when the app ends an upgraded connection, the client's closes too."""

    async def switch_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nbye")
        await writer.drain()
        writer.close()

    app = await asyncio.start_server(switch_then_close, "127.0.0.1", 0)
    try:
        router.set_route("shop/prod", ["shop.test"], [Upstream("127.0.0.1", app.sockets[0].getsockname()[1])])
        assert router.https_port
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", router.https_port, ssl=trusting(ca), server_hostname="shop.test"
        )
        writer.write(b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"
        writer.close()
    finally:
        app.close()
