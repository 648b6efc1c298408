"""Automatic certificates end to end: a real ACME CA (Pebble, its mock DNS) and a real sshd fleet of
three servers. The name points at a FOLLOWER, so the CA's validation only succeeds through the
follower forwarding the challenge to the leader; the leader orders once and every server serves the
same certificate; `tako tls renew` swaps it under keep-alive load; the sync channel is authenticated
both ways (token, pin); no secret reaches the deploy's output."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tako_core.agent.leader_link import LeaderRef, SyncError, fetch_certificate
from tako_core.config import add_server
from tests.agentkit.kit import Load
from tests.delayproxy import DelayProxy, Link, via_proxy
from tests.deploykit import TAKO, sample_app, tako
from tests.fleet import Fleet, FleetServer, router_port
from tests.pebble import NOWHERE, Pebble, require_pebble, start_pebble

NAME = "shop.tako.test"
ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")  # the fleet's first three hosts (fleet.HostPool)


def _shared_port() -> int:
    """One HTTP port free on all three addresses: Pebble validates on one port, whichever server."""
    for _ in range(50):
        port = router_port(ADDRESSES[0])
        try:
            for address in ADDRESSES[1:]:
                with socket.socket() as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no HTTP port free on all three addresses")


@pytest.fixture(scope="module")
def http_port() -> int:
    return _shared_port()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, http_port: int) -> Iterator[Pebble]:
    require_pebble()
    pebble = start_pebble(tmp_path_factory.mktemp("pebble-auto"), http_port=http_port)
    try:
        yield pebble
    finally:
        pebble.stop()


def auto_fleet(fleet: Fleet, tako_home: Path, http_port: int) -> list[FleetServer]:
    servers = fleet(3, register=False)
    for server in servers:
        server.http_port = http_port
        add_server(server.server, home=tako_home)
    return servers


def auto_app(tmp_path: Path, servers: list[FleetServer], ca: Pebble) -> Path:
    tls = f'\n[tls]\nemail = "ops@tako.test"\nacme_directory = "{ca.directory}"\n'
    tls += 'acme_ca_bundle = "certs/acme-ca.pem"\n'
    cfg = sample_app(tmp_path, servers, extra=tls)
    cfg.write_text(cfg.read_text().replace('route = "web.test"', f'route = "{NAME}"'))
    (cfg.parent / "certs").mkdir(exist_ok=True)
    (cfg.parent / "certs" / "acme-ca.pem").write_text(ca.ca_bundle.read_text())
    return cfg


def https(server: FleetServer, ca: Pebble) -> tuple[str, str]:
    """GET https://NAME/ on `server`, trusting only Pebble's root: (body, the certificate's serial)."""
    context = ssl.create_default_context(cafile=str(ca.root_pem))
    with (
        socket.create_connection((server.address, server.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert der is not None
    serial = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der, capture_output=True, check=True
    ).stdout.decode()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode().strip(), serial.strip()


def curl_https(server: FleetServer, ca: Pebble) -> subprocess.CompletedProcess[str]:
    url = f"https://{NAME}:{server.https_port}/"
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(ca.root_pem),
         "--resolve", f"{NAME}:{server.https_port}:{server.address}", url],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


def orders(server: FleetServer) -> int:
    log = (server.root / "log" / "agent.log").read_text()
    return len(re.findall(r"tls auto: web/production: ACME order ", log))


def redirect(server: FleetServer) -> tuple[int, str | None]:
    import http.client

    conn = http.client.HTTPConnection(server.address, server.http_port, timeout=5)
    try:
        conn.request("GET", "/x?y=1", headers={"Host": NAME})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


def test_one_order_for_three_servers_validated_through_a_follower(
    fleet: Fleet, tako_home: Path, tmp_path: Path, ca: Pebble, http_port: int
) -> None:
    servers = auto_fleet(fleet, tako_home, http_port)
    leader, follower, _other = servers
    ca.point(NAME, follower.address)  # the CA's validation reaches a server that holds no token
    cfg = auto_app(tmp_path, servers, ca)

    run = tako("deploy", "--json", "--yes", cwd=cfg.parent, timeout=180)
    assert run.code == 0, run.stderr
    notices = [e["message"] for e in run.events() if e["event"] == "Notice"]
    issued = [m for m in notices if m.startswith(f"HTTPS: certificate for {NAME} from ")]
    assert len(issued) == 3, notices

    served = [https(s, ca) for s in servers]
    assert all(body.startswith("v1 ") for body, _ in served), served
    assert len({serial for _, serial in served}) == 1, served  # the very same certificate
    for s in servers:
        assert curl_https(s, ca).returncode == 0
        assert redirect(s) == (308, f"https://{NAME}:{s.https_port}/x?y=1")
    assert [orders(s) for s in servers] == [1, 0, 0]

    # The secrets of the sync stay on the servers: not in the deploy's output, 0600 there.
    folder = leader.root / "acme" / "web" / "production"
    token = (folder / "token").read_text().strip()
    key = (folder / "key.pem").read_text().strip().splitlines()[1]
    logs = "".join((s.root / "log" / "agent.log").read_text() for s in servers)
    for secret in (token, key):
        assert secret not in run.stdout + run.stderr
        assert secret not in logs
    for private in (folder / "token", folder / "key.pem", leader.root / "acme" / "account.key"):
        assert private.stat().st_mode & 0o777 == 0o600
    assert (follower.root / "acme" / "web" / "production" / "auto.json").stat().st_mode & 0o777 == 0o600

    status = tako("status", cwd=cfg.parent)
    assert status.code == 0, status.stderr
    assert status.stdout.count("auto certificate: leader (orders), issued") == 1, status.stdout
    assert status.stdout.count(f"auto certificate: follower of {leader.address}:") == 2, status.stdout

    # The sync endpoint: a wrong token gets a 404, like any path nobody serves.
    wrong = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca.root_pem),
         "--resolve", f"{NAME}:{leader.https_port}:{leader.address}",
         "-H", "Authorization: Bearer not-the-token",
         f"https://{NAME}:{leader.https_port}/.well-known/tako/certificate"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert wrong.stdout == "404", wrong
    ref = LeaderRef(leader.address, leader.http_port, leader.https_port, token, pin="")
    pinned = json.loads((follower.root / "acme" / "web" / "production" / "auto.json").read_text())
    good = LeaderRef(**{**pinned["leader"]})
    assert good.pin
    assert good.token == token
    chain, got_key = asyncio.run(fetch_certificate(good, NAME))
    assert "BEGIN CERTIFICATE" in chain
    assert "PRIVATE KEY" in got_key
    # A leader whose key does not match the pin never sees the token.
    with pytest.raises(SyncError, match="presents another key"):
        asyncio.run(fetch_certificate(LeaderRef(**{**vars(ref), "pin": "0" * 64}), NAME))


async def test_a_forced_renewal_reaches_every_server_under_load_and_survives_a_restart(
    fleet: Fleet, tako_home: Path, tmp_path: Path, ca: Pebble, http_port: int
) -> None:
    servers = auto_fleet(fleet, tako_home, http_port)
    leader, follower, other = servers
    ca.point(NAME, follower.address)
    cfg = auto_app(tmp_path, servers, ca)
    run = await asyncio.to_thread(tako, "deploy", "--json", "--yes", cwd=cfg.parent, timeout=180)
    assert run.code == 0, run.stderr
    notices = [e["message"] for e in run.events() if e["event"] == "Notice"]
    assert sum(m.startswith(f"HTTPS: certificate for {NAME}") for m in notices) == 3, notices
    before = {(await asyncio.to_thread(https, s, ca))[1] for s in servers}
    assert len(before) == 1

    trust = ssl.create_default_context(cafile=str(ca.root_pem))
    loads = [
        Load(s.https_port, NAME, address=s.address, connections=2, max_seconds=90, tls=trust) for s in servers
    ]
    for load in loads:
        load.start()
    await asyncio.sleep(0.3)
    renew = await asyncio.create_subprocess_exec(
        *TAKO, "tls", "renew", cwd=cfg.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(renew.communicate(), 180)
    await asyncio.sleep(0.3)
    for load in loads:
        await load.stop()
    assert renew.returncode == 0, (out + err).decode()
    for load in loads:
        assert load.failed == [], load.errors[:5]
        assert len(load.samples) > 10
    after = {(await asyncio.to_thread(https, s, ca))[1] for s in servers}
    assert len(after) == 1, (before, after)
    assert after != before
    assert [orders(s) for s in servers] == [2, 0, 0]

    # A follower's agent restarted: its certificate is still there and served.
    await restart_agent(follower, cfg.parent)
    assert (await asyncio.to_thread(https, follower, ca))[1] in after

    # The leader down: a renewal fails naming it; the followers keep serving the certificate they
    # have, across a restart too (which fetches from the leader at once, and fails).
    pid = leader.agent_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await restart_agent(other, cfg.parent)
    assert (await asyncio.to_thread(https, other, ca))[1] in after
    failed = await asyncio.to_thread(tako, "tls", "renew", cwd=cfg.parent)
    assert failed.code == 1
    assert f"{leader.name}: failed: no tako agent answers" in failed.stdout, failed.stdout
    assert (
        f"{follower.name}: failed: not asked: the leader {leader.name} has no new certificate"
        in failed.stdout
    )
    for s in (follower, other):
        assert (await asyncio.to_thread(https, s, ca))[1] in after


async def restart_agent(server: FleetServer, cwd: Path) -> None:
    """`tako servers setup NAME --restart`: the agent restarts in place."""
    restart = await asyncio.create_subprocess_exec(
        *TAKO,
        "servers",
        "setup",
        server.name,
        "--restart",
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(restart.communicate(), 120)
    assert restart.returncode == 0, (out + err).decode()


def test_dns_not_pointing_here_is_a_warning_with_the_cas_error_and_the_deploy_succeeds(
    fleet: Fleet, tako_home: Path, tmp_path: Path, ca: Pebble, http_port: int
) -> None:
    servers = auto_fleet(fleet, tako_home, http_port)[:1]
    ca.point("elsewhere.tako.test", NOWHERE)
    cfg = auto_app(tmp_path, servers, ca)
    cfg.write_text(cfg.read_text().replace(f'route = "{NAME}"', 'route = "elsewhere.tako.test"'))

    run = tako("deploy", "--json", "--yes", cwd=cfg.parent, timeout=180)
    assert run.code == 0, run.stderr
    warnings = [e for e in run.events() if e["event"] == "Notice" and e["level"] == "warning"]
    assert len(warnings) == 1, warnings
    message = warnings[0]["message"]
    assert message.startswith("HTTPS: no certificate yet for elsewhere.tako.test: the CA could not validate")
    assert message.endswith("(the agent keeps retrying)")
    status = tako("status", cwd=cfg.parent)
    assert "auto certificate: leader (orders), pending: the CA could not validate" in status.stdout
    assert "; next attempt " in status.stdout

    # The CA unreachable: the same, with what failed.
    base = cfg.read_text()
    cfg.write_text(base.replace(ca.directory, f"https://{NOWHERE}:9/dir"))
    run = tako("deploy", "--json", "--yes", cwd=cfg.parent, timeout=180)
    assert run.code == 0, run.stderr
    warnings = [e["message"] for e in run.events() if e["event"] == "Notice" and e["level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert f"cannot reach the ACME server at https://{NOWHERE}:9/dir" in warnings[0]

    # tls = "off": the env's automatic certificate task stops, its settings go.
    cfg.write_text(base + '\ntls = "off"\n')
    assert tako("deploy", "--no-tui", "--yes", cwd=cfg.parent).code == 0
    assert not (servers[0].root / "acme" / "web" / "production" / "auto.json").exists()
    assert "auto certificate" not in tako("status", cwd=cfg.parent).stdout


def test_the_leader_holds_its_order_until_a_slow_follower_can_answer_the_ca(
    fleet: Fleet, tako_home: Path, tmp_path: Path, ca: Pebble, http_port: int
) -> None:
    """The follower DNS names is the last to come up (a slow link): were the leader to order as soon
    as it is told, the CA would find no router there (connection refused)."""
    servers = fleet(3, register=False)
    for server in servers:
        server.http_port = http_port
    leader, slow, other = servers
    with DelayProxy([(slow.address, slow.port)], Link.of(120)) as proxy:
        (slow,) = via_proxy([slow], proxy, tmp_path / "known_hosts.slow")
        for server in (leader, slow, other):
            add_server(server.server, home=tako_home)
        ca.point(NAME, slow.address)
        cfg = auto_app(tmp_path, [leader, slow, other], ca)
        run = tako("deploy", "--json", "--yes", cwd=cfg.parent, timeout=180)
    assert run.code == 0, run.stderr
    notices = [e["message"] for e in run.events() if e["event"] == "Notice"]
    assert sum(m.startswith(f"HTTPS: certificate for {NAME} from ") for m in notices) == 3, notices
    assert orders(leader) == 1
