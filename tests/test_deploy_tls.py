"""HTTPS end to end over real sshd: a brought certificate deployed with the app, served by every
server's router, seen by `curl`; the HTTP port's redirect; the key's protection; tls = "off"."""

from __future__ import annotations

import http.client
import subprocess
import time
from pathlib import Path

import pytest

from tako_core.secrets import new_exported_key
from tests.deploykit import TAKO, app_dir, get, sample_app, tako
from tests.fleet import Fleet, FleetServer
from tests.tlskit import TestCA

BRING = '\ntls = { certificate = "certs/site.pem", key_secret = "TLS_KEY" }\n'


def curl(server: FleetServer, ca: TestCA, name: str, path: str = "/") -> subprocess.CompletedProcess[str]:
    """GET https://name:port/path from `server`, trusting only the test CA (name resolved to the server)."""
    url = f"https://{name}:{server.https_port}{path}"
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(ca.cert),
            "--resolve",
            f"{name}:{server.https_port}:{server.address}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def plain(server: FleetServer, host: str, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(server.http_host, server.http_port, timeout=5)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


@pytest.fixture
def secrets_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAKO_SECRETS_KEY_PRODUCTION", new_exported_key())


def bring_certificate(cfg: Path, ca: TestCA, *names: str) -> str:
    """Put a certificate for `names` in the project, its key in the env's secret TLS_KEY; the key."""
    pair = ca.leaf(*names)
    (cfg.parent / "certs").mkdir(exist_ok=True)
    (cfg.parent / "certs" / "site.pem").write_text(pair.chain.read_text())
    key = pair.key.read_text()
    result = subprocess.run(
        [*TAKO, "secrets", "set", "TLS_KEY", "--env", "production"],
        cwd=cfg.parent,
        input=key,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return key


def deployed_with_a_brought_certificate(fleet: Fleet, tmp_path: Path) -> tuple[FleetServer, TestCA, Path]:
    """One server, the sample app deployed to it with a certificate for web.test from a test CA:
    the server, the CA and the app's tako.toml."""
    (s1,) = fleet(1)
    ca = TestCA(tmp_path / "ca")
    cfg = sample_app(tmp_path, [s1])
    cfg.write_text(cfg.read_text() + BRING)
    bring_certificate(cfg, ca, "web.test")
    assert tako("deploy", "--no-tui", "--yes", cwd=cfg.parent).code == 0
    return s1, ca, cfg


def test_a_brought_certificate_serves_https_on_every_server(
    fleet: Fleet, tako_home: Path, tmp_path: Path, secrets_key: None
) -> None:
    servers = fleet(2)
    ca = TestCA(tmp_path / "ca")
    key_path = "{root}/tls/web/production/key.pem"
    # The release command runs as the app's user: it may neither read the key nor find it in its env.
    probe = (
        f"cat {key_path.format(root=servers[0].root)} 2>&1 | tail -1; printenv TLS_KEY || echo no-key-in-env"
    )
    cfg = sample_app(tmp_path, servers, release=probe)
    routes = 'routes = ["web.test", "www.web.test"]'
    cfg.write_text(cfg.read_text().replace('route = "web.test"', routes) + BRING)
    key = bring_certificate(cfg, ca, "web.test", "www.web.test")

    run = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    assert "no-key-in-env" in run.stderr
    assert "key.pem: Permission denied" in run.stderr
    for line in key.strip().splitlines()[1:-1]:
        assert line not in run.stdout + run.stderr

    for s in servers:
        answer = curl(s, ca, "web.test", "/forwarded?x=1")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == f"https web.test:{s.https_port} /forwarded?x=1"
        # The HTTP port sends the same host to HTTPS, path and query kept.
        moved = plain(s, "web.test", "/a/b?c=d&e=%20")
        assert moved.status == 308
        assert moved.getheader("Location") == f"https://web.test:{s.https_port}/a/b?c=d&e=%20"
        # A name the certificate does not cover fails the handshake.
        refused = curl(s, ca, "other.test")
        assert refused.returncode != 0
        # The key: the agent user's alone.
        key_file = Path(key_path.format(root=s.root))
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.parent.stat().st_mode & 0o777 == 0o700
        assert key_file.read_text().strip() == key.strip()

    status = tako("status", cwd=cfg.parent)
    assert status.code == 0, status.stderr
    assert status.stdout.count("https: web.test, www.web.test (issuer CN=tako test CA), expires") == 2


def test_tls_off_removes_the_certificate_and_serves_plain_http(
    fleet: Fleet, tako_home: Path, tmp_path: Path, secrets_key: None
) -> None:
    s1, ca, cfg = deployed_with_a_brought_certificate(fleet, tmp_path)
    base = cfg.read_text().removesuffix(BRING)
    assert curl(s1, ca, "web.test").returncode == 0

    cfg.write_text(base + '\ntls = "off"\n')
    run = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    assert curl(s1, ca, "web.test").returncode != 0
    assert get(s1).startswith("v1 ")  # plain HTTP proxied again, no redirect
    assert not (s1.root / "tls" / "web" / "production").exists()


def test_a_bad_pair_or_a_missing_secret_stops_the_deploy_before_anything_changes(
    fleet: Fleet, tako_home: Path, tmp_path: Path, secrets_key: None
) -> None:
    (s1,) = fleet(1)
    ca = TestCA(tmp_path / "ca")
    cfg = sample_app(tmp_path, [s1])
    cfg.write_text(cfg.read_text() + BRING)
    (cfg.parent / "certs").mkdir()
    (cfg.parent / "certs" / "site.pem").write_text(ca.leaf("web.test").chain.read_text())

    missing = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert missing.code == 2
    assert "the secret TLS_KEY (the TLS key of env production) is not set" in missing.stderr
    assert "tako secrets set TLS_KEY --env production" in missing.stderr

    other = ca.leaf("web.test")  # a key that is not the certificate's
    subprocess.run(
        [*TAKO, "secrets", "set", "TLS_KEY", "--env", "production"],
        cwd=cfg.parent,
        input=other.key.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    mismatch = tako("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert mismatch.code != 0
    assert "the certificate and key do not load together: KEY_VALUES_MISMATCH" in mismatch.stderr
    assert not (app_dir(s1) / "current").exists()


async def test_a_certificate_swap_and_an_agent_restart_under_https_load_fail_no_request(
    fleet: Fleet, tako_home: Path, tmp_path: Path, secrets_key: None
) -> None:
    import asyncio
    import ssl

    from tests.agentkit.kit import Load

    s1, ca, cfg = deployed_with_a_brought_certificate(fleet, tmp_path)
    trust = ssl.create_default_context(cafile=str(ca.cert))
    agent_pid = s1.agent_pid()

    async def under_load(*args: str, cwd: Path) -> Load:
        load = Load(s1.https_port, "web.test", address=s1.address, connections=4, max_seconds=90, tls=trust)
        load.start()
        await asyncio.sleep(0.3)
        proc = await asyncio.create_subprocess_exec(*TAKO, *args, cwd=cwd, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await asyncio.sleep(0.3)
        await load.stop()
        assert proc.returncode == 0, err.decode()
        return load

    renewed = bring_certificate(cfg, ca, "web.test")  # a new leaf and key for the same name
    swap = await under_load("deploy", "--no-tui", "--yes", cwd=cfg.parent)
    assert swap.failed == [], swap.errors[:5]
    assert len(swap.samples) > 20
    key_file = s1.root / "tls" / "web" / "production" / "key.pem"
    assert key_file.read_text().strip() == renewed.strip()

    restart = await under_load("servers", "setup", "--restart", "s1", cwd=tako_home)
    assert restart.failed == [], restart.errors[:5]
    assert len(restart.samples) > 20
    assert s1.agent_pid() == agent_pid  # restarted in place: the HTTPS socket was handed over
    assert curl(s1, ca, "web.test").returncode == 0


async def test_new_https_connections_during_restarts_in_place_are_all_answered(
    fleet: Fleet, tako_home: Path, tmp_path: Path, secrets_key: None
) -> None:
    """A handshake under way when the agent hands its sockets over completes and is answered
    (the router sees a TLS connection only once its handshake is done: it used to be dropped)."""
    import asyncio
    import ssl

    s1, ca, _ = deployed_with_a_brought_certificate(fleet, tmp_path)
    trust = ssl.create_default_context(cafile=str(ca.cert))
    answered, errors = 0, []
    stop = asyncio.Event()

    async def connect_again_and_again() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(s1.address, s1.https_port, ssl=trust, server_hostname="web.test"),
                    10,
                )
                writer.write(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
                data = await asyncio.wait_for(reader.read(), 10)
                writer.close()
            except (OSError, TimeoutError) as err:
                errors.append(f"{time.monotonic() - began:.1f}s {type(err).__name__}: {err}")
                continue
            if data.startswith(b"HTTP/1.1 200"):
                answered += 1
            else:
                errors.append(repr(data[:60]))

    began = time.monotonic()
    clients = [asyncio.ensure_future(connect_again_and_again()) for _ in range(4)]
    await asyncio.sleep(0.3)
    restarts = []  # when each restart began and ended, to place an error if one comes
    for _ in range(5):
        restarts.append(f"{time.monotonic() - began:.1f}s")
        restart = await asyncio.create_subprocess_exec(
            *TAKO, "servers", "setup", s1.name, "--restart", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(restart.communicate(), 120)
        assert restart.returncode == 0, (out + err).decode()
        restarts[-1] += f"-{time.monotonic() - began:.1f}s"
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    assert errors == [], (
        f"restarts at {restarts}; agent log: {(s1.root / 'log' / 'agent.log').read_text()[-3000:]}"
    )
    assert answered > 100
