"""The OS keyring as a key store: service "tako", username "<app>/<env>/<key_id>".

The password is the exported form (`tako1:<key_id>:<key>`), so an entry checks itself.

Backends that do not keep a secret secret are refused: the fail and null backends (nothing is
stored) and keyrings.alt's plaintext ones, which `keyring` selects silently when keyrings.alt is
installed. A plaintext backend is accepted only when `PYTHON_KEYRING_BACKEND` names it: then it is
the user's explicit choice, not a fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
from tako_core.secrets._names import BACKEND_VAR, env_var_name, ways_out

SERVICE = "tako"
T = TypeVar("T")


def username(app: str, env: str, key_id: str) -> str:
    return f"{app}/{env}/{key_id}"


def read_key(app: str, env: str, key_id: str) -> bytes | None:
    """The key stored for this env and key id; None when the keyring has no such entry."""
    backend = usable_backend(env)
    user = username(app, env, key_id)
    stored = _call(env, "read", lambda: backend.get_password(SERVICE, user), Masker())
    if stored is None:
        return None
    try:
        key = _crypto.parse_exported_key(stored)
    except _crypto.MalformedKey:
        key = None
    if key is None or _crypto.key_id(key) != key_id:
        raise SecretsError(
            f"the keyring entry {SERVICE} / {user} does not hold the key {key_id} of env {env}",
            hint=f"import the right key: `tako secrets key export --env {env}` on a machine that has "
            f"it, then `tako secrets key import --env {env}` here",
        )
    return key


def store_key(app: str, env: str, key: bytes) -> None:
    """Stores the key and reads it back: a backend that silently drops writes is caught here."""
    backend = usable_backend(env)
    user = username(app, env, _crypto.key_id(key))
    exported = _crypto.export_key(key)
    masker = Masker([exported])
    _call(env, "store", lambda: backend.set_password(SERVICE, user, exported), masker)
    if _call(env, "read", lambda: backend.get_password(SERVICE, user), masker) != exported:
        raise SecretsError(
            f"the keyring backend {_class_path(backend)} did not keep the key of env {env}",
            hint=ways_out(env),
        )


def usable_backend(env: str) -> KeyringBackend:
    """The active backend, or a SecretsError saying why it cannot hold the key of `env`."""
    try:
        backend = keyring.get_keyring()
    except Exception as err:  # a bad PYTHON_KEYRING_BACKEND or keyringrc fails with anything
        raise SecretsError(
            f"the keyring backend cannot be loaded ({type(err).__name__}: {err}), "
            f"so the key of env {env} is unavailable",
            hint=f"check {BACKEND_VAR} and keyringrc.cfg; or {ways_out(env)}",
        ) from None
    if isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring):
        raise _no_keyring(env)
    plaintext = _plaintext_backend(backend)
    if plaintext and os.environ.get(BACKEND_VAR) != plaintext:
        raise SecretsError(
            f"the active keyring backend {plaintext} stores keys unencrypted on disk; tako will "
            f"not put the key of env {env} there",
            hint=f"{ways_out(env)}. To accept the plaintext backend anyway, select it explicitly: "
            f"{BACKEND_VAR}={plaintext}",
        )
    return backend


def _no_keyring(env: str) -> SecretsError:
    return SecretsError(
        f"no keyring backend is available and {env_var_name(env)} is not set, "
        f"so there is no key for env {env}",
        hint=ways_out(env),
    )


def _call(env: str, what: str, fn: Callable[[], T], masker: Masker) -> T:
    try:
        return fn()
    except keyring.errors.NoKeyringError:
        raise _no_keyring(env) from None
    except Exception as err:  # backends raise their own types (D-Bus, OS errors, locked)
        raise SecretsError(
            f"the keyring failed to {what} the key of env {env}: {type(err).__name__}: {masker(str(err))}",
            hint=f"unlock or repair the keyring; or {ways_out(env)}",
        ) from None


def _plaintext_backend(backend: KeyringBackend) -> str | None:
    candidates: list[KeyringBackend] = [backend]
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        candidates = list(backend.backends)
    for candidate in candidates:
        cls = type(candidate)
        if cls.__module__.startswith("keyrings.alt") and "plaintext" in cls.__name__.lower():
            return _class_path(candidate)
    return None


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
