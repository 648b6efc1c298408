"""What a person sets to give tako a key: `TAKO_SECRETS_KEY_<ENV>`, or a keyring backend."""

from __future__ import annotations

ENV_VAR_PREFIX = "TAKO_SECRETS_KEY_"
BACKEND_VAR = "PYTHON_KEYRING_BACKEND"


def is_key_var(name: str) -> bool:
    """Whether the environment variable `name` holds a secrets key (never handed to a build)."""
    return name.startswith(ENV_VAR_PREFIX)


def env_var_name(env: str) -> str:
    return ENV_VAR_PREFIX + env.upper().replace("-", "_")


def ways_out(env: str) -> str:
    """The two ways to give tako a key when the keyring cannot."""
    return (
        f"set {env_var_name(env)} to the key (`tako secrets key export --env {env}` prints it on a "
        f"machine that has it), or configure a keyring backend (e.g. {BACKEND_VAR}=module.Class, "
        "or a keyringrc.cfg; see https://pypi.org/project/keyring)"
    )
