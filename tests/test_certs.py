"""The router's certificate store (tako_core/agent/certs.py), with certificates made by `openssl`."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tako_core.agent.certs import Certs
from tako_core.agent.contract import ProtocolError
from tests.tlskit import Pair, TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def install(certs: Certs, key: str, pair: Pair) -> None:
    certs.install(key, pair.chain.read_text(), pair.key.read_text())


def test_install_stores_a_private_pair_and_answers_by_name(tmp_path: Path, ca: TestCA) -> None:
    certs = Certs(tmp_path / "tls")
    pair = ca.leaf("shop.test", "*.shop.test")
    info = certs.install("shop/prod", pair.chain.read_text(), pair.key.read_text())
    assert (info.app, info.env, info.names, info.issuer) == (
        "shop",
        "prod",
        ("shop.test", "*.shop.test"),
        "CN=tako test CA",
    )
    assert certs.infos() == [info]
    context = certs.context_for("shop.test")
    assert isinstance(context, ssl.SSLContext)
    assert certs.context_for("SHOP.test.") is context
    assert certs.context_for("www.shop.test") is context  # *. covers one label
    assert certs.context_for("a.www.shop.test") is None  # not two
    assert certs.context_for("other.test") is None
    stored = tmp_path / "tls" / "shop" / "prod"
    assert sorted(p.name for p in stored.iterdir()) == ["chain.pem", "key.pem"]  # no staging left behind
    for path in (stored / "chain.pem", stored / "key.pem"):
        assert path.stat().st_mode & 0o777 == 0o600
    for folder in (tmp_path / "tls", stored.parent, stored):
        assert folder.stat().st_mode & 0o777 == 0o700


def test_the_store_is_loaded_again_at_start(tmp_path: Path, ca: TestCA) -> None:
    first = Certs(tmp_path / "tls")
    install(first, "shop/prod", ca.leaf("shop.test"))
    (tmp_path / "tls" / "broken" / "env").mkdir(parents=True)
    (tmp_path / "tls" / "broken" / "env" / "chain.pem").write_text("not a certificate")
    again = Certs(tmp_path / "tls")
    again.load()  # the broken pair is logged and skipped
    assert [i.app for i in again.infos()] == ["shop"]
    assert again.context_for("shop.test") is not None


def test_a_swap_replaces_the_names_and_remove_forgets_them(tmp_path: Path, ca: TestCA) -> None:
    certs = Certs(tmp_path / "tls")
    install(certs, "shop/prod", ca.leaf("old.test"))
    old = certs.context_for("old.test")
    install(certs, "shop/prod", ca.leaf("new.test"))
    assert certs.context_for("old.test") is None
    assert certs.context_for("new.test") not in (None, old)
    assert certs.remove("shop/prod") is True
    assert certs.context_for("new.test") is None
    assert certs.infos() == []
    assert not (tmp_path / "tls" / "shop" / "prod").exists()
    assert certs.remove("shop/prod") is False


def test_bad_pairs_are_refused_without_echoing_the_key(tmp_path: Path, ca: TestCA) -> None:
    certs = Certs(tmp_path / "tls")
    good, other = ca.leaf("shop.test"), ca.leaf("shop.test")
    install(certs, "shop/prod", good)
    cases = [
        (good.chain.read_text(), other.key.read_text(), "KEY_VALUES_MISMATCH"),
        ("garbage", good.key.read_text(), "cannot read the certificate"),
        (
            good.chain.read_text(),
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
            "do not load",
        ),
    ]
    for chain, key, words in cases:
        with pytest.raises(ProtocolError) as caught:
            certs.install("shop/prod", chain, key)
        assert words in caught.value.message
        assert "c2VjcmV0" not in caught.value.message
        assert key.splitlines()[1] not in str(caught.value.to_error())
    assert certs.context_for("shop.test") is not None  # the installed pair stays
    assert (tmp_path / "tls" / "shop" / "prod" / "key.pem").read_text() == good.key.read_text()


def test_a_certificate_without_dns_names_is_refused(tmp_path: Path, ca: TestCA) -> None:
    import subprocess

    folder = tmp_path / "nosan"
    folder.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "1",
            "-subj",
            "/CN=shop.test",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    with pytest.raises(ProtocolError, match="names no DNS name"):
        Certs(tmp_path / "tls").install(
            "shop/prod", (folder / "c.pem").read_text(), (folder / "k.pem").read_text()
        )


def test_names_in_keys_are_checked(tmp_path: Path, ca: TestCA) -> None:
    pair = ca.leaf("shop.test")
    with pytest.raises(ProtocolError, match="invalid app name"):
        Certs(tmp_path / "tls").install("../x/prod", pair.chain.read_text(), pair.key.read_text())
