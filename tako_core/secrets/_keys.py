"""Where an env's key comes from: `TAKO_SECRETS_KEY_<ENV>` first, then the OS keyring."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tako_core.errors import SecretsError
from tako_core.secrets import _crypto
from tako_core.secrets._names import env_var_name


class KeySource:
    """Finds and stores the keys of one app's envs. `environ` is injectable for tests.

    The `keyring` package is imported only when the keyring is actually consulted: with its
    dependencies it costs tens of milliseconds, which every `tako` command would otherwise pay.
    """

    def __init__(self, app: str, environ: Mapping[str, str] | None = None) -> None:
        self.app = app
        self._environ = os.environ if environ is None else environ

    def from_env_var(self, env: str) -> bytes | None:
        var = env_var_name(env)
        text = self._environ.get(var, "").strip()
        if not text:
            return None
        try:
            return _crypto.parse_exported_key(text)
        except _crypto.MalformedKey as err:
            raise SecretsError(
                f"{var} does not hold a valid tako key: {err}",
                hint=f"set it to the output of `tako secrets key export --env {env}`",
            ) from None

    def from_keyring(self, env: str, key_id: str) -> bytes | None:
        from tako_core.secrets import _keyring

        return _keyring.read_key(self.app, env, key_id)

    def store_in_keyring(self, env: str, key: bytes) -> None:
        from tako_core.secrets import _keyring

        _keyring.store_key(self.app, env, key)

    def check_keyring(self, env: str) -> None:
        """Raises the error `store_in_keyring` would raise for want of a usable backend."""
        from tako_core.secrets import _keyring

        _keyring.usable_backend(env)
