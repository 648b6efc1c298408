"""Where an env's key comes from: `TAKO_SECRETS_KEY_<ENV>` first, then the OS keyring.

Keyring entries live under service "tako", username "<app>/<env>/<key_id>", password = the exported
form (`tako1:<key_id>:<key>`), so an entry checks itself.

Backends that do not keep a secret secret are refused: the fail and null backends (nothing is
stored) and keyrings.alt's plaintext ones, which `keyring` selects silently when keyrings.alt is
installed. A plaintext backend is accepted only when `PYTHON_KEYRING_BACKEND` names it: then it is
the user's explicit choice, not a fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import keyring.errors
from keyring.backend import KeyringBackend

from tako_core.errors import SecretsError
from tako_core.mask import Masker
from tako_core.secrets import _crypto

SERVICE = "tako"
ENV_VAR_PREFIX = "TAKO_SECRETS_KEY_"
BACKEND_VAR = "PYTHON_KEYRING_BACKEND"
T = TypeVar("T")


def env_var_name(env: str) -> str:
    return ENV_VAR_PREFIX + env.upper().replace("-", "_")


def keyring_username(app: str, env: str, key_id: str) -> str:
    return f"{app}/{env}/{key_id}"


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _ways_out(env: str) -> str:
    return (
        f"set {env_var_name(env)} to the key (`tako secrets key export --env {env}` prints it on a "
        f"machine that has it), or configure a keyring backend (e.g. {BACKEND_VAR}=module.Class, "
        "or a keyringrc.cfg; see https://pypi.org/project/keyring)"
    )


class KeySource:
    """Finds, creates and stores the key of one app's envs. `environ` is injectable for tests."""

    def __init__(self, app: str, environ: Mapping[str, str] | None = None) -> None:
        self.app = app
        self._environ = os.environ if environ is None else environ

    # --- the environment variable -------------------------------------------------------------

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

    def env_var_is_set(self, env: str) -> bool:
        return bool(self._environ.get(env_var_name(env), "").strip())

    # --- the keyring --------------------------------------------------------------------------

    def from_keyring(self, env: str, key_id: str) -> bytes | None:
        backend = self._backend(env)
        username = keyring_username(self.app, env, key_id)
        stored = self._call(env, "read", lambda: backend.get_password(SERVICE, username), masker=Masker())
        if stored is None:
            return None
        try:
            key = _crypto.parse_exported_key(stored)
        except _crypto.MalformedKey:
            key = None
        if key is None or _crypto.key_id(key) != key_id:
            raise SecretsError(
                f"the keyring entry {SERVICE} / {username} does not hold the key {key_id} of env {env}",
                hint=f"import the right key: `tako secrets key export --env {env}` on a machine that has "
                f"it, then `tako secrets key import --env {env}` here",
            )
        return key

    def store_in_keyring(self, env: str, key: bytes) -> None:
        """Stores the key and reads it back: a backend that silently drops writes is caught here."""
        backend = self._backend(env)
        kid = _crypto.key_id(key)
        username = keyring_username(self.app, env, kid)
        exported = _crypto.export_key(key)
        masker = Masker([exported])
        self._call(env, "store", lambda: backend.set_password(SERVICE, username, exported), masker=masker)
        back = self._call(env, "read", lambda: backend.get_password(SERVICE, username), masker=masker)
        if back != exported:
            raise SecretsError(
                f"the keyring backend {_class_path(backend)} did not keep the key of env {env}",
                hint=_ways_out(env),
            )

    def check_keyring(self, env: str) -> None:
        """Raises the error `store_in_keyring` would raise for want of a usable backend."""
        self._backend(env)

    def _backend(self, env: str) -> KeyringBackend:
        try:
            backend = keyring.get_keyring()
        except Exception as err:  # a bad PYTHON_KEYRING_BACKEND or keyringrc fails with anything
            raise SecretsError(
                f"the keyring backend cannot be loaded ({type(err).__name__}: {err}), "
                f"so the key of env {env} is unavailable",
                hint=f"check {BACKEND_VAR} and keyringrc.cfg; or " + _ways_out(env),
            ) from err
        if isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring):
            raise self._no_keyring(env)
        plaintext = _plaintext_backend(backend)
        if plaintext and os.environ.get(BACKEND_VAR) != plaintext:
            raise SecretsError(
                f"the active keyring backend {plaintext} stores keys unencrypted on disk; tako will "
                f"not put the key of env {env} there",
                hint=f"{_ways_out(env)}. To accept the plaintext backend anyway, select it explicitly: "
                f"{BACKEND_VAR}={plaintext}",
            )
        return backend

    def _no_keyring(self, env: str) -> SecretsError:
        return SecretsError(
            f"no keyring backend is available and {env_var_name(env)} is not set, "
            f"so there is no key for env {env}",
            hint=_ways_out(env),
        )

    def _call(self, env: str, what: str, fn: Callable[[], T], *, masker: Masker) -> T:
        try:
            return fn()
        except keyring.errors.NoKeyringError:
            raise self._no_keyring(env) from None
        except Exception as err:  # backends raise their own types (D-Bus, OS errors, locked)
            raise SecretsError(
                f"the keyring failed to {what} the key of env {env}: "
                f"{type(err).__name__}: {masker(str(err))}",
                hint=f"unlock or repair the keyring; or {_ways_out(env)}",
            ) from None


def _plaintext_backend(backend: KeyringBackend) -> str | None:
    candidates: list[KeyringBackend] = [backend]
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        candidates = list(backend.backends)
    for candidate in candidates:
        if type(candidate).__module__.startswith("keyrings.alt") and "plaintext" in (
            type(candidate).__name__.lower()
        ):
            return _class_path(candidate)
    return None
