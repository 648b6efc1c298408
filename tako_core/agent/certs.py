"""The router's certificates: per app/env a chain and its private key, kept under ROOT/tls, chosen by SNI.

Each env's pair lives in ROOT/tls/<app>/<env>/ (chain.pem, key.pem), both 0600 in directories of the
agent's user alone (0700): app users never read a key. A pair is checked before it replaces anything
(loaded into an `ssl.SSLContext`: a key that does not match the leaf is refused) and written
atomically. Python's `ssl` has no public X.509 parser, so the names, issuer and expiry come from the
`openssl` command (`acme_crypto.cert_info`; there wherever `ca-certificates` is, `servers setup`
checks for it).
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tako_core.agent.acme_crypto import AcmeError, cert_info
from tako_core.agent.contract import BAD_REQUEST, CertificateInfo, ProtocolError
from tako_core.agent.layout import check_name, write_private

log = logging.getLogger("tako.agent")


@dataclass(frozen=True)
class Certificate:
    key: str  # "app/env"
    info: CertificateInfo
    context: ssl.SSLContext


def server_context() -> ssl.SSLContext:
    """A TLS server context with the router's settings (TLS 1.2+, ALPN http/1.1), no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _bad(message: str) -> ProtocolError:
    return ProtocolError(
        BAD_REQUEST,
        message,
        hint="give the PEM certificate chain (leaf first) and the PEM private key of that leaf",
    )


def inspect(key: str, chain: Path) -> CertificateInfo:
    """The leaf's DNS names (lowercase), issuer, expiry (epoch seconds) and serial."""
    try:
        info = cert_info(chain.read_bytes())
    except AcmeError as e:
        raise _bad(f"cannot read the certificate: {e}") from None
    if not info.names:
        raise _bad("the certificate names no DNS name (subjectAltName)")
    app, _, env = key.partition("/")
    return CertificateInfo(
        app=app,
        env=env,
        names=tuple(name.lower() for name in info.names),
        issuer=info.issuer,
        not_after=info.not_after,
        serial=info.serial.lstrip(b"\0").hex(),
    )


class Certs:
    """The certificates under `root`, loaded at start; `context_for` answers the router's SNI lookups."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._certs: dict[str, Certificate] = {}
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wild: dict[str, ssl.SSLContext] = {}  # "example.com" for *.example.com
        self._lock = threading.Lock()  # install and remove run in threads (the openssl command)

    def load(self) -> None:
        """Every stored pair; one that no longer loads is logged and skipped, never fatal."""
        for chain in sorted(self.root.glob("*/*/chain.pem")):
            key = f"{chain.parent.parent.name}/{chain.parent.name}"
            try:
                self._certs[key] = _load(key, chain, chain.with_name("key.pem"))
            except (ProtocolError, OSError, ssl.SSLError, ValueError) as e:
                log.error("tls: cannot load the certificate of %s: %s", key, e)
        self._index()

    def _dir(self, key: str) -> Path:
        app, _, env = key.partition("/")
        return self.root / check_name("app", app) / check_name("env", env)

    def install(self, key: str, chain_pem: str, key_pem: str) -> CertificateInfo:
        """Check the pair, then replace `key`'s atomically: new handshakes get it, open connections
        keep theirs."""
        target = self._dir(key)
        with self._lock:
            cert = self._write(key, target, chain_pem, key_pem)
            self._certs[key] = cert
            self._index()
        log.info("tls: installed the certificate of %s for %s", key, ", ".join(cert.info.names))
        return cert.info

    def _write(self, key: str, target: Path, chain_pem: str, key_pem: str) -> Certificate:
        target.mkdir(parents=True, exist_ok=True)
        for d in (self.root, target.parent, target):
            os.chmod(d, 0o700)
        # Checked from files of our own (load_cert_chain reads files), in the key's own 0700 folder.
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=target))
        try:
            write_private(staging / "chain.pem", chain_pem.encode())
            write_private(staging / "key.pem", key_pem.encode())
            cert = _load(key, staging / "chain.pem", staging / "key.pem")
            write_private(target / "key.pem", key_pem.encode())
            write_private(target / "chain.pem", chain_pem.encode())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cert

    def remove(self, key: str) -> bool:
        """Forget `key`'s certificate (True if there was one)."""
        target = self._dir(key)
        with self._lock:
            had = self._certs.pop(key, None) is not None
            if target.exists():
                shutil.rmtree(target)
                had = True
            self._index()
        return had

    def get(self, key: str) -> CertificateInfo | None:
        cert = self._certs.get(key)
        return cert.info if cert else None

    def pair(self, key: str) -> tuple[str, str] | None:
        """`key`'s chain and private key as installed (PEM), or None."""
        target = self._dir(key)
        with self._lock:  # never a new key with the old chain, halfway through an install
            if key not in self._certs:
                return None
            try:
                return (target / "chain.pem").read_text(), (target / "key.pem").read_text()
            except OSError:
                return None

    def infos(self) -> list[CertificateInfo]:
        return [c.info for _, c in sorted(self._certs.items())]

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The context whose certificate covers `server_name` (an exact name first, then `*.parent`)."""
        name = server_name.lower().rstrip(".")
        ctx = self._exact.get(name)
        if ctx is None and "." in name:
            ctx = self._wild.get(name.split(".", 1)[1])
        return ctx

    def _index(self) -> None:
        """Rebuilt whole and swapped in one assignment each, so a lookup never sees half a change."""
        exact: dict[str, ssl.SSLContext] = {}
        wild: dict[str, ssl.SSLContext] = {}
        for cert in sorted(self._certs.values(), key=lambda c: c.info.not_after):  # the newest wins
            for name in cert.info.names:
                if name.startswith("*."):
                    wild[name[2:]] = cert.context
                else:
                    exact[name] = cert.context
        self._exact, self._wild = exact, wild


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of OpenSSL prompting on a terminal


def _load(key: str, chain: Path, private: Path) -> Certificate:
    info = inspect(key, chain)
    ctx = server_context()
    try:
        ctx.load_cert_chain(chain, private, password=_no_password)
    except ssl.SSLError as e:
        # The reason only ("key values mismatch", "PEM lib"): never anything read from the key.
        raise _bad(f"the certificate and key do not load together: {e.reason or 'invalid PEM'}") from None
    return Certificate(key, info, ctx)
