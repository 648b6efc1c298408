"""A real ACME CA for tests: Debian's `pebble` (Let's Encrypt's test CA) with `pebble-challtestsrv`
as its mock DNS, both on 127.0.0.1 with free ports.

`start_pebble` makes a CA and a certificate (SAN 127.0.0.1, localhost) for pebble's own HTTPS
directory with `openssl`, writes pebble's JSON config (the HTTP-01 validation port is the one the
test's challenge responder listens on), starts the mock DNS with only its DNS server and management
API, starts pebble pointed at it (`-dnsserver`) with its random nonce rejection left on (5%) unless
asked otherwise and `PEBBLE_VA_NOSLEEP=1`, and fetches pebble's issuing root (`/roots/0`), which
changes at every start. `Pebble.point(name, address)` adds an A record. `ChallengeResponder` is
the tiny HTTP server that answers `/.well-known/acme-challenge/<token>` from what `publish` put in.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fleet import _die_with_parent, free_port

ADDRESS = "127.0.0.1"
# Where tests answer challenges (pebble's httpPort is free there), and where nothing listens.
RESPONDER = "127.0.2.1"
NOWHERE = "127.0.2.2"
START_TIMEOUT = 15.0


def require_pebble() -> None:
    """Skip the test where pebble is not installed, except in CI where that fails it."""
    missing = [b for b in ("pebble", "pebble-challtestsrv", "openssl") if shutil.which(b) is None]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install pebble openssl"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Pebble:
    directory: str
    ca_bundle: Path  # trusts pebble's own HTTPS (the ACME client's `ca_bundle`)
    root_pem: Path  # pebble's issuing root, to verify what it issues
    http_port: int  # where pebble sends HTTP-01 validation requests
    dns_management: str
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def point(self, name: str, address: str) -> None:
        """An A record in the mock DNS: `name` -> `address` (127.0.0.x)."""
        body = json.dumps({"host": name, "addresses": [address]}).encode()
        request = urllib.request.Request(f"{self.dns_management}/add-a", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_tls(workdir: Path) -> None:
    """ca.pem, and cert.pem/key.pem signed by it for 127.0.0.1 and localhost."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=tako test CA",
             "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE", cwd=workdir)  # fmt: skip
    _openssl("req", *ec, "-keyout", "key.pem", "-out", "req.csr", "-subj", "/CN=localhost", cwd=workdir)
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "cert.pem", "-days", "2", "-extfile", "san.ext", cwd=workdir)  # fmt: skip


def _wait_https(url: str, context: ssl.SSLContext, procs: list[subprocess.Popen[bytes]]) -> bytes:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"pebble exited while starting (waiting for {url})")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, context=context, timeout=2) as r:
            return bytes(r.read())
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT:.0f} s")


def _wait_listening(port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"pebble-challtestsrv exited while starting (waiting for :{port})")
        with contextlib.suppress(OSError), socket.create_connection((ADDRESS, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{ADDRESS}:{port} did not accept connections within {START_TIMEOUT:.0f} s")


def start_pebble(workdir: Path, *, nonce_reject: int | None = None, http_port: int | None = None) -> Pebble:
    """Pebble + its mock DNS in `workdir`; `nonce_reject` overrides pebble's 5% (percent);
    `http_port` is where it validates HTTP-01 (default: a port free on RESPONDER)."""
    workdir.mkdir(parents=True, exist_ok=True)
    _make_tls(workdir)
    acme, management = free_port(ADDRESS), free_port(ADDRESS)
    http_port = http_port or free_port(RESPONDER)
    dns, dns_management = free_port(ADDRESS), free_port(ADDRESS)
    config = {
        "pebble": {
            "listenAddress": f"{ADDRESS}:{acme}",
            "managementListenAddress": f"{ADDRESS}:{management}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(workdir / "key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(ADDRESS),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (workdir / "pebble.json").write_text(json.dumps(config))
    log = workdir / "pebble.log"
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1"}
    if nonce_reject is not None:
        env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
    procs: list[subprocess.Popen[bytes]] = []
    pebble = Pebble(
        directory=f"https://{ADDRESS}:{acme}/dir",
        ca_bundle=workdir / "ca.pem",
        root_pem=workdir / "root.pem",
        http_port=http_port,
        dns_management=f"http://{ADDRESS}:{dns_management}",
        log=log,
        procs=procs,
    )
    try:
        with (workdir / "challtestsrv.log").open("wb") as out:
            dns_argv = ["pebble-challtestsrv", "-dns01", f"{ADDRESS}:{dns}", "-http01", "",
                        "-https01", "", "-tlsalpn01", "", "-management", f"{ADDRESS}:{dns_management}",
                        "-defaultIPv4", ADDRESS, "-defaultIPv6", ""]  # fmt: skip
            procs.append(subprocess.Popen(dns_argv, stdout=out, stderr=out, preexec_fn=_die_with_parent))
        _wait_listening(dns_management, procs)
        with log.open("wb") as out:
            argv = ["pebble", "-config", str(workdir / "pebble.json"), "-dnsserver", f"{ADDRESS}:{dns}"]
            procs.append(subprocess.Popen(argv, stdout=out, stderr=out, env=env, preexec_fn=_die_with_parent))
        context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
        _wait_https(pebble.directory, context, procs)
        root = _wait_https(f"https://{ADDRESS}:{management}/roots/0", context, procs)
        pebble.root_pem.write_bytes(root)
    except BaseException:
        pebble.stop()
        raise
    return pebble


class ChallengeResponder:
    """Answers HTTP-01 on `address:port` from a dict that `publish`/`withdraw` fill."""

    def __init__(self, address: str, port: int) -> None:
        self.answers: dict[str, str] = {}
        self.requests: list[str] = []
        answers, requests = self.answers, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                token = self.path.removeprefix("/.well-known/acme-challenge/")
                body = answers.get(token, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, token: str, key_authorization: str) -> None:
        self.answers[token] = key_authorization

    def withdraw(self, token: str) -> None:
        self.answers.pop(token, None)

    @contextlib.contextmanager
    def running(self) -> Iterator[ChallengeResponder]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
