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
    """The ways to give tako a key when the keyring cannot: the exact commands."""
    var = env_var_name(env)
    return (
        f"give tako the key in {var}: for an env without secrets yet, a new one with\n"
        f'    eval "$(tako secrets key new -e {env})"\n'
        f"(keep the key it exported somewhere safe, e.g. your CI's secrets); for an env that has "
        f"secrets, the key `tako secrets key export -e {env}` prints on a machine that has it.\n"
        "Or install a keyring: on a Linux desktop the Secret Service (`sudo apt install gnome-keyring`); "
        f"headless, `pip install keyrings.cryptfile` and {BACKEND_VAR}=keyrings.cryptfile.cryptfile."
        "CryptFileKeyring (any backend: https://pypi.org/project/keyring)"
    )
