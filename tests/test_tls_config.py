"""HTTPS in tako.toml: `[tls]`, each env's `tls`, and how an env's mode resolves from its routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako_core.config import Inventory, Server, load_config, resolve
from tako_core.config.tls import (
    AUTO,
    BROUGHT,
    LETS_ENCRYPT,
    OFF,
    BroughtCertificate,
    ResolvedTls,
    TlsSettings,
)
from tako_core.errors import ConfigError

INVENTORY = Inventory(servers={"web-1": Server(name="web-1", host="127.0.0.2")}, path=Path("servers.toml"))


def env_config(tmp_path: Path, routes: str, tls: str = "", top: str = "") -> Path:
    path = tmp_path / "tako.toml"
    path.write_text(f'name = "shop"\n{top}\n[envs.production]\nservers = ["web-1"]\n{routes}\n{tls}\n')
    return path


def test_tls_table_and_defaults(tmp_path: Path) -> None:
    plain = load_config(env_config(tmp_path, 'route = "shop.example.com"'))
    assert plain.tls == TlsSettings(email=None, acme_directory=LETS_ENCRYPT, acme_ca_bundle=None)
    top = (
        '[tls]\nemail = "ops@example.com"\nacme_directory = "https://pebble:14000/dir"\n'
        'acme_ca_bundle = "certs/ca.pem"\n'
    )
    path = tmp_path / "tako.toml"
    path.write_text(f'name = "shop"\n{top}[envs.production]\nservers = ["web-1"]\n')
    assert load_config(path).tls == TlsSettings(
        email="ops@example.com",
        acme_directory="https://pebble:14000/dir",
        acme_ca_bundle=tmp_path / "certs/ca.pem",
    )


@pytest.mark.parametrize(
    ("routes", "tls", "mode", "warns"),
    [
        ('routes = ["shop.example.com", "www.shop.example.com"]', "", AUTO, None),
        ('route = "shop.example.com"', 'tls = "auto"', AUTO, None),
        ('route = "shop.example.com"', 'tls = "off"', OFF, None),
        ("", "", OFF, None),  # no routes: nothing to certify
        (
            'routes = ["shop.example.com", "127.0.0.11"]',
            "",
            OFF,
            "route 127.0.0.11 is an IP address or localhost",
        ),
        ('route = "localhost"', 'tls = "auto"', OFF, "route localhost is an IP address or localhost"),
        ('route = "*.example.com"', "", OFF, "wildcard route *.example.com: served over plain HTTP"),
        ('route = "*.example.com"', 'tls = "off"', OFF, None),
        ('route = "shop.test"', "", OFF, "route shop.test is a special-use or single-label name"),
        ('route = "intranet"', 'tls = "auto"', OFF, "route intranet is a special-use or single-label name"),
    ],
)
def test_mode_resolution(tmp_path: Path, routes: str, tls: str, mode: str, warns: str | None) -> None:
    resolved = resolve(load_config(env_config(tmp_path, routes, tls)), "production", INVENTORY)
    assert resolved.tls.mode == mode
    if warns is None:
        assert resolved.tls.warning is None
    else:
        assert resolved.tls.warning is not None
        assert resolved.tls.warning.startswith(warns)


def test_special_use_names_get_automatic_certificates_from_a_ca_of_ones_own(tmp_path: Path) -> None:
    top = '[tls]\nacme_directory = "https://pebble.test:14000/dir"\n'
    path = env_config(tmp_path, 'route = "shop.test"', "", top)
    assert resolve(load_config(path), "production", INVENTORY).tls == ResolvedTls(AUTO)


def test_a_brought_certificate(tmp_path: Path) -> None:
    tls = 'tls = { certificate = "certs/site.pem", key_secret = "TLS_KEY" }'
    resolved = resolve(
        load_config(env_config(tmp_path, 'route = "*.example.com"', tls)), "production", INVENTORY
    )
    assert resolved.tls.mode == BROUGHT
    assert resolved.tls.certificate == BroughtCertificate(tmp_path / "certs/site.pem", "TLS_KEY")
    assert "certs/site.pem (key: secret TLS_KEY)" in resolved.tls.describe


def test_auto_written_out_for_a_wildcard_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = env_config(tmp_path, 'route = "*.example.com"', 'tls = "auto"')
    with pytest.raises(ConfigError) as caught:
        resolve(load_config(path), "production", INVENTORY)
    err = caught.value
    assert "wildcards need a DNS-01 challenge" in err.message
    assert err.line == 6
    assert err.hint is not None
    assert 'set tls = "off"' in err.hint
    assert "certificate" in err.hint


@pytest.mark.parametrize(
    ("tls", "top", "line", "words"),
    [
        ('tls = "on"', "", 6, "unknown tls mode 'on'"),
        ("tls = 1", "", 6, "'tls' must be a string or a table"),
        ('tls = { certificate = "c.pem" }', "", 6, "missing key 'key_secret'"),
        ('tls = { certificate = "c.pem", key_secret = "K", key = "x" }', "", 6, "unknown key 'key'"),
        ('tls = { certificate = "/etc/c.pem", key_secret = "K" }', "", 6, "is not a path inside the project"),
        ('tls = { certificate = "../c.pem", key_secret = "K" }', "", 6, "is not a path inside the project"),
        ('tls = { certificate = "c.pem", key_secret = "1K" }', "", 6, "invalid variable name '1K'"),
        ("", '[tls]\nemail = "nobody"', 3, "invalid email 'nobody'"),
        ("", '[tls]\nacme_directory = "http://x/dir"', 3, "is not an https:// URL"),
        ("", '[tls]\nmail = "a@b.c"', 3, "unknown key 'mail' in [tls]; did you mean 'email'?"),
        ("", 'tls = "auto"', 2, "'tls' must be a table"),
    ],
)
def test_broken_tls_config(tmp_path: Path, tls: str, top: str, line: int, words: str) -> None:
    path = env_config(tmp_path, 'route = "shop.example.com"', tls, top)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert words in err.message
    assert (err.path, err.line) == (path, line)
    assert err.hint
