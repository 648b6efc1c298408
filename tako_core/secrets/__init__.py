"""Secrets: `.tako/secrets.json` (AES-256-GCM per value), keys in the OS keyring or the environment.

Public surface::

    load_env_secrets(config_dir, app, env) -> dict[str, str]
    SecretsStore.open(config_dir, app)  # envs(), names(env), get, get_all, set, remove, save,
                                        # export_key, import_key, key_id
    secrets_path(config_dir), key_env_var(env), is_key_var(var), is_valid_name(name), check_name(name)
    new_exported_key()                  # a fresh key, in the TAKO_SECRETS_KEY_<ENV> form
"""

from __future__ import annotations

from pathlib import Path

from tako_core.errors import SecretsError
from tako_core.secrets._crypto import export_key, new_key
from tako_core.secrets._file import check_name
from tako_core.secrets._names import env_var_name as key_env_var
from tako_core.secrets._names import is_key_var
from tako_core.secrets._store import SecretsStore, secrets_path

__all__ = [
    "SecretsStore",
    "check_name",
    "is_key_var",
    "is_valid_name",
    "key_env_var",
    "load_env_secrets",
    "new_exported_key",
    "secrets_path",
]


def new_exported_key() -> str:
    """A fresh random key in the exported form, for machines without a keyring (CI, the demo)."""
    return export_key(new_key())


def load_env_secrets(config_dir: Path, app: str, env: str) -> dict[str, str]:
    """All decrypted values of one env; {} (no key needed) when the env has none."""
    return SecretsStore.open(config_dir, app).get_all(env)


def is_valid_name(name: str) -> bool:
    """Whether `name` can be a secret's name (an env var name that tako does not set itself)."""
    try:
        check_name(name)
    except SecretsError:
        return False
    return True
