"""A deploy's part in HTTPS: the env's brought certificate installed on every server before the
rollout, or removed when the env's tls is off. "auto" certificates are the agent's business (ACME)."""

from __future__ import annotations

from dataclasses import dataclass

from tako_core.config import ResolvedEnv
from tako_core.config.files import located
from tako_core.config.schema import Invalid
from tako_core.config.tls import AUTO, BROUGHT
from tako_core.errors import BadInput


@dataclass(frozen=True, repr=False)
class CertificateStep:
    """Install `chain` + `key` (both set), or remove the env's certificate (both None)."""

    chain: str | None = None
    key: str | None = None  # a private key: never in output (repr=False keeps it out of tracebacks too)


def certificate_step(
    target: ResolvedEnv, secrets: dict[str, str]
) -> tuple[CertificateStep | None, dict[str, str]]:
    """What the deploy does with the env's certificate (None: nothing), and the secrets its app gets:
    a brought certificate's key is not one of them, so no app ever reads it."""
    tls = target.tls
    if tls.mode == AUTO:
        return None, secrets
    if tls.mode != BROUGHT or tls.certificate is None:
        return CertificateStep(), secrets
    brought = tls.certificate
    try:
        chain = brought.certificate.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "it is not a PEM (ASCII) file"
        invalid = Invalid(
            ("envs", target.env, "tls", "certificate"),
            f"cannot read the TLS certificate {brought.certificate}: {reason}",
            "put the PEM certificate chain (leaf first) there, or point tls.certificate at it",
            at_value=True,
        )
        raise located(invalid, target.config_path, target.config_path.read_text()) from None
    if brought.key_secret not in secrets:
        raise BadInput(
            f"the secret {brought.key_secret} (the TLS key of env {target.env}) is not set",
            hint=f"tako secrets set {brought.key_secret} --env {target.env} < site.key",
        )
    rest = {name: value for name, value in secrets.items() if name != brought.key_secret}
    return CertificateStep(chain, secrets[brought.key_secret]), rest
