"""The ACME client's crypto through the `openssl` command: EC P-256 keys, ES256 JWS, the CSR, and
reading a certificate's names, issuer, validity and ARI identifiers.

The agent may not need pip packages on a server, and every Debian/Ubuntu server with
`ca-certificates` has `openssl` (1.1.1+: `-addext`, `-ext`). Private keys never touch a plain file:
they go to openssl through a pipe (`/dev/fd/N`), and on disk only as the agent's own 0600 files
(`layout.write_private`). openssl's stderr, quoted in errors, never contains key material.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tako_core.agent.layout import write_private

OPENSSL_TIMEOUT = 30.0
# DER SubjectPublicKeyInfo of a P-256 key up to the uncompressed point (0x04 || X || Y).
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AcmeError(Exception):
    """Obtaining a certificate failed; the message says what the CA or openssl said."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def openssl(args: Sequence[str], stdin: bytes = b"", key_pem: bytes | None = None) -> bytes:
    """Run `openssl ARGS`; `{key}` in ARGS is replaced by a pipe carrying `key_pem`."""
    exe = shutil.which("openssl")
    if exe is None:
        raise AcmeError("the openssl command is missing: install it (apt-get install openssl)")
    with _key_pipe(key_pem) as key_path:
        argv = [exe, *(a.replace("{key}", key_path) for a in args)]
        fds = (int(key_path.rsplit("/", 1)[1]),) if key_pem is not None else ()
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, timeout=OPENSSL_TIMEOUT, pass_fds=fds
            )
        except subprocess.TimeoutExpired as err:
            raise AcmeError(f"openssl {args[0]} took over {OPENSSL_TIMEOUT:.0f} s") from err
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()[:3]
        raise AcmeError(f"openssl {args[0]} failed: {' / '.join(message)}")
    return done.stdout


@contextlib.contextmanager
def _key_pipe(key_pem: bytes | None) -> Iterator[str]:
    if key_pem is None:
        yield ""
        return
    read, write = os.pipe()
    try:
        # A key is far below the pipe's buffer (64 KiB), so this write never blocks.
        os.write(write, key_pem)
    finally:
        os.close(write)  # closed once only: another thread may reuse the number at once
    try:
        yield f"/dev/fd/{read}"
    finally:
        os.close(read)


def generate_key() -> bytes:
    """A new EC P-256 private key, PEM."""
    return openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])


def load_or_create_key(path: Path) -> bytes:
    """The key at `path`, made (0600, atomically) when there is none yet."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = generate_key()
        write_private(path, key)
        return key


@dataclass(frozen=True)
class AccountKey:
    """An ES256 key as ACME uses it: its PEM, its JWK and the JWK's RFC 7638 thumbprint."""

    pem: bytes
    jwk: dict[str, str]
    thumbprint: str

    @classmethod
    def from_pem(cls, pem: bytes) -> AccountKey:
        spki = openssl(["pkey", "-in", "{key}", "-pubout", "-outform", "DER"], key_pem=pem)
        if not spki.startswith(_P256_SPKI_PREFIX) or len(spki) != len(_P256_SPKI_PREFIX) + 65:
            raise AcmeError("the ACME account key is not an EC P-256 key (delete it to make one)")
        point = spki[len(_P256_SPKI_PREFIX) + 1 :]
        jwk = {"crv": "P-256", "kty": "EC", "x": b64url(point[:32]), "y": b64url(point[32:])}
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
        return cls(pem, jwk, b64url(hashlib.sha256(canonical).digest()))

    def sign(self, data: bytes) -> bytes:
        """ES256: openssl's DER ECDSA signature turned into JWS's raw r || s (64 bytes)."""
        der = openssl(["dgst", "-sha256", "-sign", "{key}"], stdin=data, key_pem=self.pem)
        return raw_signature(der)

    def jws(self, url: str, nonce: str, payload: object | None, kid: str | None) -> bytes:
        """A flattened JWS (RFC 8555 6.2): `kid` once there is an account, the JWK before;
        payload None is a POST-as-GET (empty payload)."""
        protected: dict[str, object] = {"alg": "ES256", "nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        head = b64url(json.dumps(protected).encode())
        body = "" if payload is None else b64url(json.dumps(payload).encode())
        signature = b64url(self.sign(f"{head}.{body}".encode()))
        return json.dumps({"protected": head, "payload": body, "signature": signature}).encode()


def raw_signature(der: bytes) -> bytes:
    """DER `SEQUENCE { INTEGER r, INTEGER s }` -> r || s, each 32 bytes big-endian."""
    if len(der) < 8 or der[0] != 0x30:
        raise AcmeError("openssl gave an unexpected ECDSA signature")
    pos = 3 if der[1] == 0x81 else 2  # a long-form length byte (never for P-256, but legal)
    parts = []
    for _ in range(2):
        if der[pos] != 0x02:
            raise AcmeError("openssl gave an unexpected ECDSA signature")
        size = der[pos + 1]
        value = der[pos + 2 : pos + 2 + size].lstrip(b"\x00")
        if len(value) > 32:
            raise AcmeError("openssl gave an unexpected ECDSA signature")
        parts.append(value.rjust(32, b"\x00"))
        pos += 2 + size
    return parts[0] + parts[1]


def key_pin(key_pem: bytes) -> str:
    """The pin of a private key: sha256 (hex) of its public key's DER SubjectPublicKeyInfo."""
    spki = openssl(["pkey", "-in", "{key}", "-pubout", "-outform", "DER"], key_pem=key_pem)
    return hashlib.sha256(spki).hexdigest()


def cert_pin(cert_der: bytes) -> str:
    """The pin of a DER certificate's public key (as `key_pin` of its private key)."""
    pem = openssl(["x509", "-inform", "DER", "-noout", "-pubkey"], stdin=cert_der).decode("ascii")
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


def csr(key_pem: bytes, names: Sequence[str]) -> bytes:
    """A DER CSR for `names` (all in subjectAltName, empty subject) signed by `key_pem`."""
    san = "subjectAltName=" + ",".join(f"DNS:{n}" for n in names)
    args = ["req", "-new", "-key", "{key}", "-subj", "/", "-addext", san, "-outform", "DER"]
    return openssl(args, key_pem=key_pem)


@dataclass(frozen=True)
class CertInfo:
    """What tako shows and renews by: the first certificate of a PEM chain."""

    names: tuple[str, ...]
    issuer: str
    not_before: float  # epoch seconds, as the agent keeps time
    not_after: float
    serial: bytes  # the DER INTEGER's content octets (RFC 9773's serial part)
    authority_key_id: bytes  # the AKI keyIdentifier (RFC 9773's other part); b"" when absent


def cert_info(pem: bytes) -> CertInfo:
    """Read names, issuer, validity, serial and AKI with `openssl x509`."""
    fields = ["-subject", "-issuer", "-startdate", "-enddate", "-serial", "-nameopt", "RFC2253"]
    ext = ["-ext", "subjectAltName,authorityKeyIdentifier"]
    text = openssl(["x509", "-noout", *fields, *ext], stdin=pem).decode(errors="replace")
    values: dict[str, str] = {}
    names: list[str] = []
    aki = b""
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("X509v3 "):
            section = line
        elif line[:1].isspace() and "Subject Alternative Name" in section:
            names += [p.strip()[4:] for p in stripped.split(",") if p.strip().startswith("DNS:")]
        elif line[:1].isspace() and "Authority Key Identifier" in section:
            # 1.1.1 prints "keyid:AB:CD:..", 3.x prints "AB:CD:.."; issuer/serial lines follow.
            hex_part = stripped.removeprefix("keyid:")
            if not aki and all(len(p) == 2 for p in hex_part.split(":")):
                aki = bytes.fromhex(hex_part.replace(":", ""))
        elif "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    serial_hex = values.get("serial", "")
    serial = bytes.fromhex(serial_hex.rjust(len(serial_hex) + len(serial_hex) % 2, "0"))
    if serial[:1] and serial[0] >= 0x80:
        serial = b"\x00" + serial  # DER keeps a positive INTEGER's sign bit clear
    return CertInfo(
        names=tuple(names),
        issuer=values.get("issuer", ""),
        not_before=_openssl_time(values.get("notBefore", "")),
        not_after=_openssl_time(values.get("notAfter", "")),
        serial=serial,
        authority_key_id=aki,
    )


def _openssl_time(text: str) -> float:
    """openssl's `Dec  2 13:07:03 2026 GMT` (English months whatever the locale) -> epoch."""
    parts = text.split()
    try:
        month = _MONTHS.index(parts[0]) + 1
        hour, minute, second = (int(p) for p in parts[2].split(":"))
        return float(calendar.timegm((int(parts[3]), month, int(parts[1]), hour, minute, second)))
    except (IndexError, ValueError) as err:
        raise AcmeError(f"openssl printed an unreadable date {text!r}") from err
