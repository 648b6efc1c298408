"""`SecretsStore`: one app's secrets file in memory; values decrypted one at a time, on demand."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tako_core.errors import SecretsError
from tako_core.secrets import _crypto, _file
from tako_core.secrets._keys import KeySource
from tako_core.secrets._names import env_var_name

SECRETS_DIR = ".tako"
SECRETS_FILE = "secrets.json"


def secrets_path(config_dir: Path) -> Path:
    return config_dir / SECRETS_DIR / SECRETS_FILE


class SecretsStore:
    """Read and change the secrets of one app; nothing reaches the disk before `save()`.

    Listing envs and names needs no key. A key is looked up (env var, then keyring) the first time
    an env's value is read or written, and checked against the env's `key_id` in the file.
    """

    def __init__(self, path: Path, app: str, *, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.app = app
        self._source = KeySource(app, environ)
        state = _file.read(path)
        self._envs = state.envs
        self._fingerprint = state.fingerprint
        self._keys: dict[str, bytes] = {}
        self._dirty = False

    @classmethod
    def open(cls, config_dir: Path, app: str, *, environ: Mapping[str, str] | None = None) -> SecretsStore:
        return cls(secrets_path(config_dir), app, environ=environ)

    # --- reading ------------------------------------------------------------------------------

    def envs(self) -> list[str]:
        return sorted(self._envs)

    def names(self, env: str) -> list[str]:
        entry = self._envs.get(env)
        return sorted(entry.secrets) if entry else []

    def key_id(self, env: str) -> str | None:
        entry = self._envs.get(env)
        return entry.key_id if entry else None

    def get(self, env: str, name: str) -> str:
        entry = self._envs.get(env)
        if entry is None or name not in entry.secrets:
            raise SecretsError(
                f"no secret {name} in env {env}", hint=f"`tako secrets ls --env {env}` lists its secrets"
            )
        return self._decrypt(env, name, self._require_key(env))

    def get_all(self, env: str) -> dict[str, str]:
        """Every value of the env; {} without needing a key when the env has no secrets."""
        names = self.names(env)
        if not names:
            return {}
        key = self._require_key(env)
        return {name: self._decrypt(env, name, key) for name in names}

    # --- changing -----------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._dirty

    def set(self, env: str, name: str, value: str) -> None:
        """Encrypts the value; the env's key is created (and stored in the keyring) on first use."""
        _file.check_env(env)
        _file.check_name(name)
        if not value:
            raise SecretsError(f"empty value for {name}", hint=f"to remove it: `tako secrets rm {name}`")
        if "\0" in value:
            raise SecretsError(f"the value of {name} contains a NUL byte, which no environment can hold")
        key = self._key(env) or self._create_key(env)
        # An env seen for the first time takes the key it was given (env var) or the one just made.
        entry = self._envs.setdefault(env, _file.EnvSecrets(key_id=_crypto.key_id(key)))
        if name in entry.secrets and self._unchanged(env, name, key, value):
            return  # keep the old ciphertext: re-encrypting an unchanged value would churn the diff
        entry.secrets[name] = _crypto.encrypt(key, self.app, env, name, value)
        self._dirty = True

    def remove(self, env: str, name: str) -> None:
        """Forgets the value. The env keeps its key id even when it becomes empty."""
        entry = self._envs.get(env)
        if entry is None or name not in entry.secrets:
            raise SecretsError(
                f"no secret {name} in env {env}", hint=f"`tako secrets ls --env {env}` lists its secrets"
            )
        del entry.secrets[name]
        self._dirty = True

    def save(self) -> None:
        """Writes the file atomically, or raises and leaves it as it was."""
        if not self._dirty:
            return
        self._fingerprint = _file.write(self.path, self._envs, self._fingerprint)
        self._dirty = False

    # --- keys ---------------------------------------------------------------------------------

    def unlock(self, env: str) -> None:
        """Finds the env's existing key now (env var, then keyring), raising if it is unavailable.

        Lets a front end report a missing key before asking the user for a value. For an env without
        a key yet, checks that a usable keyring backend is there to hold the one `set` will create.
        """
        if self._key(env) is None:
            self._source.check_keyring(env)

    def export_key(self, env: str) -> str:
        """The env's key in the form `TAKO_SECRETS_KEY_<ENV>` and `import_key` accept."""
        key = self._key(env)
        if key is None:
            raise SecretsError(
                f"env {env} has no secrets key yet", hint=f"`tako secrets set NAME --env {env}` creates it"
            )
        return _crypto.export_key(key)

    def import_key(self, env: str, exported: str) -> str:
        """Checks the key against every value of the env, then stores it in the keyring.

        Returns the key id. On any mismatch nothing is stored.
        """
        try:
            key = _crypto.parse_exported_key(exported)
        except _crypto.MalformedKey as err:
            raise SecretsError(
                f"not a valid tako key: {err}",
                hint=f"paste the output of `tako secrets key export --env {env}`",
            ) from None
        entry = self._envs.get(env)
        if entry is None:
            raise SecretsError(
                f"env {env} is not in {self.path}, so there is nothing to check the key against",
                hint="get the secrets file that goes with the key first (e.g. `git pull`)",
            )
        kid = _crypto.key_id(key)
        if kid != entry.key_id:
            raise SecretsError(
                f"this key (id {kid}) is not the key of env {env}, which uses key {entry.key_id}"
                f"{self._owner_note(kid)}; nothing was stored",
                hint=f"export the key of env {env}: `tako secrets key export --env {env}`",
            )
        for name in sorted(entry.secrets):
            self._decrypt(env, name, key)
        self._source.store_in_keyring(env, key)
        self._keys[env] = key
        return kid

    def _require_key(self, env: str) -> bytes:
        key = self._key(env)
        if key is None:  # unreachable for an env in the file: `_key` raises instead
            raise SecretsError(f"env {env} has no secrets key")
        return key

    def _key(self, env: str) -> bytes | None:
        """The env's key, or None when neither the file nor the env var has one yet."""
        if env in self._keys:
            return self._keys[env]
        entry = self._envs.get(env)
        key = self._source.from_env_var(env)
        if key is not None:
            kid = _crypto.key_id(key)
            if entry is not None and kid != entry.key_id:
                raise SecretsError(
                    f"{env_var_name(env)} holds key {kid}, but env {env} in {self.path} is encrypted "
                    f"with key {entry.key_id}{self._owner_note(kid)}",
                    hint=f"set {env_var_name(env)} to the output of `tako secrets key export --env {env}`",
                )
        elif entry is None:
            return None
        else:
            key = self._source.from_keyring(env, entry.key_id)
            if key is None:
                raise SecretsError(
                    f"the key {entry.key_id} of env {env} is not in the keyring and "
                    f"{env_var_name(env)} is not set",
                    hint=f"on a machine that has it run `tako secrets key export --env {env}`, then here "
                    f"`tako secrets key import --env {env}` (or set {env_var_name(env)})",
                )
        self._keys[env] = key
        return key

    def _create_key(self, env: str) -> bytes:
        key = _crypto.new_key()
        self._source.store_in_keyring(env, key)
        self._keys[env] = key
        return key

    def _owner_note(self, kid: str) -> str:
        owners = [env for env, entry in sorted(self._envs.items()) if entry.key_id == kid]
        return f" (it is the key of env {owners[0]})" if owners else ""

    def _decrypt(self, env: str, name: str, key: bytes) -> str:
        try:
            return _crypto.decrypt(key, self.app, env, name, self._envs[env].secrets[name])
        except _crypto.DecryptionFailed as err:
            raise SecretsError(
                f"secret {name} of env {env} in {self.path} cannot be decrypted ({err}): the file was "
                f"altered, or the value was moved there from another name, env or app",
                hint=f"restore the file from version control, or set the value again: "
                f"`tako secrets set {name} --env {env}`",
            ) from None

    def _unchanged(self, env: str, name: str, key: bytes, value: str) -> bool:
        try:
            return self._decrypt(env, name, key) == value
        except SecretsError:
            return False  # a damaged old value is simply replaced
