"""HTTPS in `tako.toml`: the top-level `[tls]` table (ACME account and CA) and each env's `tls` mode.

    [tls]
    email = "ops@example.com"           # the ACME account's contact
    acme_directory = "https://..."      # default: Let's Encrypt production
    acme_ca_bundle = "certs/ca.pem"     # trust this CA when talking to the ACME server

    [envs.production]
    tls = "auto"                        # the default when every route is a DNS name
    tls = "off"                         # plain HTTP only
    tls = { certificate = "certs/site.pem", key_secret = "TLS_KEY" }   # bring your own

Resolving an env's mode: "auto" with IP or localhost routes falls back to plain HTTP with a warning
(no CA certifies those); "auto" written out with a wildcard route is an error (wildcards need DNS-01,
which tako does not do), and left unwritten it falls back with a warning too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .locate import KeyPath
from .schema import Invalid, check_keys, check_var_name, expect_str, optional_str, type_name

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
TLS_KEYS = ("email", "acme_directory", "acme_ca_bundle")
BRING_KEYS = ("certificate", "key_secret")
AUTO, OFF, BROUGHT = "auto", "off", "certificate"
# Names no public CA certifies (RFC 2606, 6761, 6762, 8375; ICANN's .internal).
SPECIAL_USE = (".test", ".example", ".invalid", ".local", ".internal", ".home.arpa")
_ENV_HINT = 'tls = "auto", "off", or { certificate = "certs/site.pem", key_secret = "TLS_KEY" }'


@dataclass(frozen=True)
class TlsSettings:
    """The `[tls]` table: how "auto" certificates are obtained."""

    email: str | None = None
    acme_directory: str = LETS_ENCRYPT
    acme_ca_bundle: Path | None = None  # absolute (resolved against the project folder)


@dataclass(frozen=True)
class BroughtCertificate:
    """A certificate the user brings: its PEM chain in the project, its private key a secret of the env."""

    certificate: Path  # absolute (resolved against the project folder)
    key_secret: str


EnvTls = str | BroughtCertificate  # AUTO, OFF or a BroughtCertificate


@dataclass(frozen=True)
class ResolvedTls:
    """How an env serves HTTPS: `mode` is AUTO, OFF or BROUGHT; `warning` says why "auto" fell back to
    plain HTTP (then `mode` is OFF and nothing is removed from the servers)."""

    mode: str
    certificate: BroughtCertificate | None = None
    warning: str | None = None

    @property
    def describe(self) -> str:
        if self.certificate is not None:
            return f"certificate {self.certificate.certificate} (key: secret {self.certificate.key_secret})"
        if self.warning is not None:
            return "off (plain HTTP: " + self.warning.split(": ", 1)[0] + ")"
        return {AUTO: "auto (ACME)", OFF: "off"}.get(self.mode, self.mode)


def tls_settings(data: Mapping[str, Any], base: Path) -> TlsSettings:
    """The top-level `[tls]` table, if any."""
    if "tls" not in data:
        return TlsSettings()
    table = data["tls"]
    if not isinstance(table, Mapping):
        raise Invalid(
            ("tls",), f"'tls' must be a table, not {type_name(table)}", '[tls] then email = "ops@example.com"'
        )
    check_keys(table, TLS_KEYS, ("tls",))
    email = optional_str(table, "email", ("tls",), 'the ACME account contact, e.g. email = "ops@example.com"')
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise Invalid(
            ("tls", "email"), f"invalid email {email!r}", 'e.g. email = "ops@example.com"', at_value=True
        )
    directory = optional_str(table, "acme_directory", ("tls",), f'an https:// URL, e.g. "{LETS_ENCRYPT}"')
    if directory is not None and not directory.startswith("https://"):
        raise Invalid(
            ("tls", "acme_directory"),
            f"acme_directory {directory!r} is not an https:// URL",
            f"the ACME server's directory URL, e.g. {LETS_ENCRYPT}",
            at_value=True,
        )
    bundle = _project_file(table, "acme_ca_bundle", ("tls",), base, 'e.g. acme_ca_bundle = "certs/ca.pem"')
    return TlsSettings(email=email, acme_directory=directory or LETS_ENCRYPT, acme_ca_bundle=bundle)


def env_tls(table: Mapping[str, Any], path: KeyPath, base: Path) -> EnvTls | None:
    """An env's `tls` value; None when it is not written."""
    if "tls" not in table:
        return None
    value, at = table["tls"], (*path, "tls")
    if isinstance(value, str):
        if value not in (AUTO, OFF):
            raise Invalid(at, f"unknown tls mode {value!r}", _ENV_HINT, at_value=True)
        return value
    if not isinstance(value, Mapping):
        raise Invalid(
            at, f"'tls' must be a string or a table, not {type_name(value)}", _ENV_HINT, at_value=True
        )
    check_keys(value, BRING_KEYS, at)
    for key in BRING_KEYS:
        if key not in value:
            raise Invalid(at, f"missing key '{key}' in the env's tls table", _ENV_HINT, at_value=True)
    certificate = _project_file(value, "certificate", at, base, 'e.g. certificate = "certs/site.pem"')
    assert certificate is not None
    secret = expect_str(
        value["key_secret"], (*at, "key_secret"), 'the secret holding the key, e.g. "TLS_KEY"'
    )
    check_var_name(secret, (*at, "key_secret"))
    return BroughtCertificate(certificate=certificate, key_secret=secret)


def resolve_tls(
    written: EnvTls | None, routes: tuple[str, ...], env: str, *, public_ca: bool = True
) -> ResolvedTls | Invalid:
    """The env's mode from what is written and its routes; an `Invalid` (the caller locates it) when
    "auto" is written out for a wildcard route. With a public CA (`public_ca`: the default
    acme_directory), names no public CA certifies (`.test`, `.internal`, one label...) fall back to
    plain HTTP with a warning, as IPs and localhost do with any CA."""
    if isinstance(written, BroughtCertificate):
        return ResolvedTls(BROUGHT, certificate=written)
    if written == OFF or not routes:
        return ResolvedTls(OFF)
    wildcards = [r for r in routes if r.startswith("*.")]
    if wildcards:
        fix = (
            "bring a certificate for them (tls = { certificate = ..., key_secret = ... }) "
            f'or set tls = "off" in [envs.{env}]'
        )
        if written == AUTO:
            return Invalid(
                ("envs", env, "tls"),
                f"wildcard route {wildcards[0]} cannot get an automatic certificate: wildcards need a DNS-01 "
                "challenge, which tako does not do",
                fix,
                at_value=True,
            )
        return ResolvedTls(OFF, warning=f"wildcard route {wildcards[0]}: served over plain HTTP; {fix}")
    local = [r for r in routes if _not_certifiable(r)]
    if local:
        return ResolvedTls(
            OFF,
            warning=f"route {local[0]} is an IP address or localhost: served over plain HTTP (no CA "
            'certifies it); bring a certificate or set tls = "off" to silence this',
        )
    private = [r for r in routes if _special_use(r)] if public_ca else []
    if private:
        return ResolvedTls(
            OFF,
            warning=f"route {private[0]} is a special-use or single-label name: served over plain HTTP "
            "(no public CA certifies it); set [tls] acme_directory to a CA of your own, bring a "
            'certificate, or set tls = "off" to silence this',
        )
    return ResolvedTls(AUTO)


def _special_use(route: str) -> bool:
    """A name under a TLD reserved for private use or testing, or of one label."""
    return "." not in route or route.lower().endswith(SPECIAL_USE)


def _not_certifiable(route: str) -> bool:
    if route == "localhost" or route.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(route)
    except ValueError:
        return False
    return True


def _project_file(table: Mapping[str, Any], key: str, path: KeyPath, base: Path, hint: str) -> Path | None:
    """A file inside the project, as an absolute path; not checked for existence here."""
    text = optional_str(table, key, path, hint)
    if text is None:
        return None
    if not text.strip() or text.startswith(("/", "~")) or ".." in Path(text).parts:
        raise Invalid((*path, key), f"{key} {text!r} is not a path inside the project", hint, at_value=True)
    return base / text
