"""The agent's ACME client against a real CA (Pebble, tests/pebble.py), and its renewal timing.

Pebble rejects 5% of good nonces at random, reuses valid authorizations half of the time and
validates HTTP-01 by really connecting to the name's address (from its mock DNS) on its `httpPort`,
where each test runs a `ChallengeResponder` fed by the client's `publish`.
"""

from __future__ import annotations

import http.server
import json
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tako_core.agent.acme import AcmeClient, AcmeProblem, obtain, retry_after
from tako_core.agent.acme_crypto import (
    AccountKey,
    AcmeError,
    CertInfo,
    cert_info,
    generate_key,
    openssl,
    raw_signature,
)
from tako_core.agent.acme_renewal import (
    BACKOFF_CAP,
    RenewalWindow,
    after_failure,
    ari_cert_id,
    due_at,
    next_ari_check,
    parse_renewal_info,
    pick_in_window,
    renew_at,
    rfc3339,
)
from tests.pebble import (
    NOWHERE,
    RESPONDER,
    ChallengeResponder,
    Pebble,
    require_pebble,
    start_pebble,
)


@pytest.fixture
def responder(pebble: Pebble) -> Iterator[ChallengeResponder]:
    with ChallengeResponder(RESPONDER, pebble.http_port).running() as running:
        yield running


def _obtain(
    ca: Pebble, responder: ChallengeResponder, tmp_path: Path, names: list[str], log: list[str]
) -> tuple[str, bytes]:
    cert_key = generate_key()
    chain = obtain(
        ca.directory,
        account_key=tmp_path / "account.pem",
        email="ops@tako.test",
        names=names,
        cert_key_pem=cert_key,
        ca_bundle=ca.ca_bundle,
        publish=responder.publish,
        withdraw=responder.withdraw,
        timeout=60,
        log=log.append,
    )
    return chain, cert_key


def _check_chain(ca: Pebble, chain: str, cert_key: bytes, names: list[str], tmp_path: Path) -> None:
    """The chain verifies against pebble's root, names exactly `names`, and fits `cert_key`."""
    leaf = chain[: chain.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")]
    (tmp_path / "chain.pem").write_text(chain)
    (tmp_path / "leaf.pem").write_text(leaf)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.root_pem), "-untrusted", "chain.pem", "leaf.pem"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    info = cert_info(leaf.encode())
    assert sorted(info.names) == sorted(names)
    assert "Pebble Intermediate CA" in info.issuer
    leaf_public = openssl(["x509", "-pubkey", "-noout"], stdin=leaf.encode())
    assert leaf_public == openssl(["pkey", "-in", "{key}", "-pubout"], key_pem=cert_key)


def test_obtains_a_certificate_for_one_name(
    pebble: Pebble, responder: ChallengeResponder, tmp_path: Path
) -> None:
    pebble.point("one.tako.test", RESPONDER)
    log: list[str] = []
    chain, cert_key = _obtain(pebble, responder, tmp_path, ["one.tako.test"], log)
    _check_chain(pebble, chain, cert_key, ["one.tako.test"], tmp_path)
    # The CA really fetched the answer from the responder, and every published answer is gone.
    assert any(p.startswith("/.well-known/acme-challenge/") for p in responder.requests)
    assert responder.answers == {}
    assert stat.S_IMODE((tmp_path / "account.pem").stat().st_mode) == 0o600
    assert any("created" in line for line in log)


def test_two_names_and_the_account_is_reused(
    pebble: Pebble, responder: ChallengeResponder, tmp_path: Path
) -> None:
    names = ["www.two.tako.test", "two.tako.test"]
    for name in names:
        pebble.point(name, RESPONDER)
    first: list[str] = []
    chain, cert_key = _obtain(pebble, responder, tmp_path, names, first)
    _check_chain(pebble, chain, cert_key, names, tmp_path)

    second: list[str] = []
    chain, cert_key = _obtain(pebble, responder, tmp_path, names, second)
    _check_chain(pebble, chain, cert_key, names, tmp_path)
    created = [line for line in first if line.startswith("ACME account")]
    reused = [line for line in second if line.startswith("ACME account")]
    assert created[0].endswith(" created")
    assert reused == [created[0].replace(" created", " reused")]  # the same account URL


def test_a_challenge_the_ca_cannot_reach_fails_with_its_detail(
    pebble: Pebble, responder: ChallengeResponder, tmp_path: Path
) -> None:
    pebble.point("unreachable.tako.test", NOWHERE)
    with pytest.raises(AcmeError) as failure:
        _obtain(pebble, responder, tmp_path, ["unreachable.tako.test"], [])
    message = str(failure.value)
    assert "could not validate unreachable.tako.test" in message
    assert "urn:ietf:params:acme:error:connection" in message
    assert f"{NOWHERE}:{pebble.http_port}: connect: connection refused" in message
    assert responder.answers == {}  # withdrawn on failure too


def test_wildcards_and_ips_are_refused_clearly(
    pebble: Pebble, responder: ChallengeResponder, tmp_path: Path
) -> None:
    with pytest.raises(AcmeError, match=r"no http-01 challenge for \*\.tako\.test .*DNS-01"):
        _obtain(pebble, responder, tmp_path, ["*.tako.test"], [])
    with pytest.raises(AcmeProblem) as failure:
        _obtain(pebble, responder, tmp_path, ["127.0.0.1"], [])
    assert failure.value.type == "urn:ietf:params:acme:error:malformed"
    assert "IP address" in failure.value.detail


def test_the_ca_is_trusted_only_through_the_bundle(pebble: Pebble, tmp_path: Path) -> None:
    key = AccountKey.from_pem(generate_key())
    with pytest.raises(AcmeError, match=r"cannot reach the ACME server .*CERTIFICATE_VERIFY_FAILED"):
        AcmeClient(pebble.directory, key, None).account("ops@tako.test")
    with pytest.raises(AcmeError, match=r"cannot read the ACME CA bundle .*missing\.pem"):
        AcmeClient(pebble.directory, key, tmp_path / "missing.pem")
    with pytest.raises(AcmeError, match=r"must be an https:// URL"):
        AcmeClient(pebble.directory.replace("https:", "http:"), key, pebble.ca_bundle)


@pytest.fixture(scope="module")
def noisy_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A second pebble rejecting half of the good nonces."""
    require_pebble()
    ca = start_pebble(tmp_path_factory.mktemp("noisy-pebble"), nonce_reject=50)
    try:
        yield ca
    finally:
        ca.stop()


def test_bad_nonces_are_retried(noisy_pebble: Pebble, tmp_path: Path) -> None:
    # ~15 signed requests at 50% rejection: all passing first time has a chance of 2**-15, and
    # without the retry any single rejection fails the issuance.
    noisy_pebble.point("noisy.tako.test", RESPONDER)
    log: list[str] = []
    with ChallengeResponder(RESPONDER, noisy_pebble.http_port).running() as responder:
        chain, cert_key = _obtain(noisy_pebble, responder, tmp_path, ["noisy.tako.test"], log)
    _check_chain(noisy_pebble, chain, cert_key, ["noisy.tako.test"], tmp_path)
    assert any("badNonce" in line for line in log)


def test_problem_documents_name_type_detail_and_retry_after() -> None:
    # As Let's Encrypt sends it (HTTP 429 with Retry-After), from its rate-limit documentation.
    rate_limited = {
        "type": "urn:ietf:params:acme:error:rateLimited",
        "detail": "Error creating new order :: too many certificates already issued for exact set "
        "of domains: example.com: see https://letsencrypt.org/docs/rate-limits/",
        "status": 429,
    }
    problem = AcmeProblem("https://acme.example/new-order", rate_limited, 3600.0)
    assert problem.type.endswith(":rateLimited")
    assert str(problem) == (
        "the ACME server refused https://acme.example/new-order: "
        "urn:ietf:params:acme:error:rateLimited: Error creating new order :: too many "
        "certificates already issued for exact set of domains: example.com: see "
        "https://letsencrypt.org/docs/rate-limits/ (retry after 3600 s)"
    )
    # RFC 8555 6.7.1's example: subproblems name their identifiers.
    compound = {
        "type": "urn:ietf:params:acme:error:malformed",
        "detail": "Some of the identifiers requested were rejected",
        "subproblems": [
            {
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "Invalid underscore in DNS name",
                "identifier": {"type": "dns", "value": "_example.org"},
            },
            {
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "This CA will not issue for example.net",
                "identifier": {"type": "dns", "value": "example.net"},
            },
        ],
    }
    message = str(AcmeProblem("https://acme.example/new-order", compound, None))
    assert "_example.org: urn:ietf:params:acme:error:malformed: Invalid underscore" in message
    assert "example.net: urn:ietf:params:acme:error:rejectedIdentifier: This CA will not" in message
    assert "retry after" not in message


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = rfc3339("2015-10-21T07:28:00Z")
    assert retry_after({"retry-after": "120"}, now) == 120.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:30:00 GMT"}, now) == 120.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:00:00 GMT"}, now) == 0.0
    assert retry_after({"retry-after": "soon"}, now) is None
    assert retry_after({}, now) is None


def test_the_ari_directory_entry_as_pebble_offers_it(pebble: Pebble, tmp_path: Path) -> None:
    """Debian's pebble 2.4 has no `renewalInfo`: the client then says None (renew by lifetime).
    A pebble that offers it gets a real window for a real certificate."""
    client = AcmeClient(pebble.directory, AccountKey.from_pem(generate_key()), pebble.ca_bundle)
    pem = pebble.root_pem.read_bytes()
    if not client.offers("renewalInfo"):
        assert client.renewal_info(pem) is None
        return
    pebble.point("ari.tako.test", RESPONDER)  # a newer pebble: a real window
    with ChallengeResponder(RESPONDER, pebble.http_port).running() as responder:
        chain, _ = _obtain(pebble, responder, tmp_path, ["ari.tako.test"], [])
    answer = client.renewal_info(chain.encode())
    assert answer is not None
    window, _ = answer
    info = cert_info(chain.encode())
    assert info.not_before < window.start < window.end < info.not_after


def test_renewal_info_is_fetched_by_the_certificates_id(
    pebble: Pebble, responder: ChallengeResponder, tmp_path: Path
) -> None:
    """Pebble 2.4 has no ARI, so a stand-in CA (HTTPS with pebble's own directory certificate)
    serves a directory with `renewalInfo` and one window, for a certificate pebble really issued."""
    pebble.point("ari-id.tako.test", RESPONDER)
    chain, _ = _obtain(pebble, responder, tmp_path, ["ari-id.tako.test"], [])
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            base = f"https://{self.headers['Host']}"
            ari = b'{"suggestedWindow": {"start": "2030-01-02T04:00:00Z", "end": "2030-01-03T04:00:00Z"}}'
            body = json.dumps({"renewalInfo": f"{base}/ari/"}).encode() if self.path == "/dir" else ari
            self.send_response(200)
            self.send_header("Retry-After", "21600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pebble.ca_bundle.with_name("cert.pem"), pebble.ca_bundle.with_name("key.pem"))
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        directory = f"https://127.0.0.1:{server.server_address[1]}/dir"
        client = AcmeClient(directory, AccountKey.from_pem(generate_key()), pebble.ca_bundle)
        answer = client.renewal_info(chain.encode())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert paths == ["/dir", f"/ari/{ari_cert_id(cert_info(chain.encode()))}"]
    assert answer is not None
    window, retry = answer
    assert window.start == rfc3339("2030-01-02T04:00:00Z")
    assert 21590 < (retry or 0) <= 21600


def test_the_ari_cert_id_of_an_issued_certificate(
    pebble: Pebble, responder: ChallengeResponder, tmp_path: Path
) -> None:
    pebble.point("id.tako.test", RESPONDER)
    chain, _ = _obtain(pebble, responder, tmp_path, ["id.tako.test"], [])
    intermediate = chain.split("-----END CERTIFICATE-----\n", 1)[1].encode()
    ski = openssl(["x509", "-noout", "-ext", "subjectKeyIdentifier"], stdin=intermediate).decode()
    serial = openssl(["x509", "-noout", "-serial"], stdin=chain.encode()).decode()
    info = cert_info(chain.encode())
    assert info.authority_key_id.hex().upper() == ski.splitlines()[1].strip().replace(":", "")
    assert int.from_bytes(info.serial, "big") == int(serial.strip().removeprefix("serial="), 16)
    assert info.not_after - info.not_before > 86400  # pebble's validity: 5 years


def test_ari_cert_id_is_rfc_9773s_example() -> None:
    info = CertInfo(
        names=(),
        issuer="",
        not_before=0.0,
        not_after=0.0,
        serial=bytes.fromhex("0087654321"),
        authority_key_id=bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"),
    )
    assert ari_cert_id(info) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_renewal_is_due_at_a_third_of_the_lifetime_left() -> None:
    start = rfc3339("2026-01-01T00:00:00Z")
    ninety_days = 90 * 86400.0
    assert due_at(start, start + ninety_days) == start + 60 * 86400.0
    info = CertInfo((), "", start, start + ninety_days, b"\x01", b"\x02")
    assert renew_at(info, None, 0.5) == start + 60 * 86400.0
    window = RenewalWindow(start + 10 * 86400.0, start + 12 * 86400.0, None)
    assert renew_at(info, window, 0.0) == window.start
    assert renew_at(info, window, 0.5) == start + 11 * 86400.0
    assert window.start <= pick_in_window(window, 0.999999) < window.end


def test_renewal_info_parses_rfc_9773s_example() -> None:
    body = b"""{
      "suggestedWindow": {"start": "2025-01-02T04:00:00Z", "end": "2025-01-03T04:00:00Z"},
      "explanationURL": "https://acme.example.com/docs/ari"
    }"""
    window = parse_renewal_info(body)
    assert window.end - window.start == 86400.0
    assert window.start == rfc3339("2025-01-02T06:00:00.000+02:00")
    assert window.explanation_url == "https://acme.example.com/docs/ari"
    with pytest.raises(AcmeError, match="ends before it starts"):
        parse_renewal_info(
            b'{"suggestedWindow": {"start": "2025-01-03T04:00:00Z", "end": "2025-01-02T04:00:00Z"}}'
        )
    with pytest.raises(AcmeError, match="malformed"):
        parse_renewal_info(b'{"suggestedWindow": {"start": "tomorrow"}}')


def test_rfc3339_times() -> None:
    assert rfc3339("1970-01-01T00:00:00Z") == 0.0
    assert rfc3339("1970-01-01T01:00:00.25+01:00") == 0.25
    assert rfc3339("1969-12-31t23:30:00-00:30") == 0.0
    with pytest.raises(ValueError, match="RFC 3339"):
        rfc3339("2025-01-02 04:00")


def test_ari_checks_honour_retry_after_within_bounds() -> None:
    assert next_ari_check(1000.0, None) == 1000.0 + 6 * 3600
    assert next_ari_check(1000.0, 7200.0) == 1000.0 + 7200
    assert next_ari_check(1000.0, 1.0) == 1000.0 + 60  # not hammering the CA
    assert next_ari_check(1000.0, 30 * 86400.0) == 1000.0 + 86400  # at least daily


def test_failures_back_off_exponentially_up_to_a_cap() -> None:
    waits = [after_failure(0.0, n) for n in range(1, 12)]
    assert waits[:4] == [60.0, 120.0, 240.0, 480.0]
    assert waits == sorted(waits)
    assert waits[-1] == BACKOFF_CAP
    assert after_failure(0.0, 1000) == BACKOFF_CAP
    assert after_failure(0.0, 1, retry_after=3600.0) == 3600.0  # a rateLimited's Retry-After wins


def test_der_signatures_become_raw_r_and_s() -> None:
    r = bytes([0x80]) + bytes(31)  # high bit set: DER prefixes a zero byte
    s = bytes(2) + bytes([0x01]) * 30  # leading zeros: DER drops them
    der_r = b"\x02\x21\x00" + r
    der_s = b"\x02\x1e" + s.lstrip(b"\x00")
    body = der_r + der_s
    assert raw_signature(b"\x30" + bytes([len(body)]) + body) == r + s
    with pytest.raises(AcmeError):
        raw_signature(b"\x31\x06\x02\x01\x01\x02\x01\x01")


def test_a_real_signature_verifies_with_openssl(tmp_path: Path) -> None:
    key = AccountKey.from_pem(generate_key())
    raw = key.sign(b"payload")
    assert len(raw) == 64
    # Back to DER (both integers positive, minimal) and checked by openssl against the public key.
    ints = []
    for half in (raw[:32], raw[32:]):
        value = half.lstrip(b"\x00")
        value = b"\x00" + value if value[0] & 0x80 else value
        ints.append(b"\x02" + bytes([len(value)]) + value)
    der = b"\x30" + bytes([len(ints[0]) + len(ints[1])]) + ints[0] + ints[1]
    (tmp_path / "sig").write_bytes(der)
    (tmp_path / "pub.pem").write_bytes(openssl(["pkey", "-in", "{key}", "-pubout"], key_pem=key.pem))
    (tmp_path / "data").write_bytes(b"payload")
    check = ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig", "data"]
    assert subprocess.run(check, cwd=tmp_path, capture_output=True, timeout=30).returncode == 0


def test_a_missing_openssl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AcmeError, match=r"openssl command is missing: install it"):
        generate_key()


def test_a_non_p256_account_key_is_refused() -> None:
    rsa = openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"])
    with pytest.raises(AcmeError, match="not an EC P-256 key"):
        AccountKey.from_pem(rsa)
