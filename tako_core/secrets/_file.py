"""The `.tako/secrets.json` format: parsing with precise errors, and atomic, diff-stable writes.

Layout (version 1)::

    {"version": 1, "envs": {"<env>": {"key_id": "<8 hex>", "secrets": {"NAME": "<base64>"}}}}

Names and key ids are public; values are AES-GCM ciphertexts (see `_crypto`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tako_core.errors import SecretsError

FORMAT_VERSION = 1
NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
# Env names end up in `TAKO_SECRETS_KEY_<ENV>` and in keyring usernames: no separators, no spaces.
ENV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
# tako sets these in every process it starts; a secret of that name would silently lose or win.
# (The same rule as [vars] in tako.toml; kept here because secrets do not depend on config.)
RESERVED_NAMES = ("PORT", "ENV")
RESERVED_PREFIX = "TAKO_"
RESTORE_HINT = "restore it from version control (e.g. `git checkout -- .tako/secrets.json`)"


@dataclass
class EnvSecrets:
    """One env's entry: the id of its key and NAME -> stored (encrypted) value."""

    key_id: str
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass
class FileState:
    envs: dict[str, EnvSecrets]
    # sha256 of the bytes read (None: no file). `write` refuses to clobber a file changed since.
    fingerprint: str | None


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise SecretsError(
            f"invalid secret name {name!r}",
            hint="secret names are environment variable names: A-Z, 0-9 and _, not starting with a digit",
        )
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX):
        raise SecretsError(
            f"{name} is set by tako itself in every process it starts, so it cannot be a secret",
            hint=f"choose another name: not {', '.join(RESERVED_NAMES)}, not starting with {RESERVED_PREFIX}",
        )


def check_env(env: str) -> None:
    if not ENV_RE.fullmatch(env):
        raise SecretsError(
            f"invalid env name {env!r}",
            hint="env names use letters, digits, '-' and '_', starting with a letter or digit",
        )


def read(path: Path) -> FileState:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return FileState(envs={}, fingerprint=None)
    except OSError as err:
        raise SecretsError(f"cannot read {path}: {err.strerror}") from err
    fingerprint = hashlib.sha256(raw).hexdigest()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SecretsError(f"{path}: not UTF-8 text (byte {err.start})", hint=RESTORE_HINT) from err
    except json.JSONDecodeError as err:
        raise SecretsError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}", hint=RESTORE_HINT
        ) from err
    return FileState(envs=_parse(path, doc), fingerprint=fingerprint)


def _parse(path: Path, doc: Any) -> dict[str, EnvSecrets]:
    def bad(what: str) -> SecretsError:
        return SecretsError(f"{path}: {what}", hint=RESTORE_HINT)

    if not isinstance(doc, dict):
        raise bad("expected a JSON object at the top")
    version = doc.get("version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise SecretsError(
                f"{path}: format version {version} is newer than this tako understands ({FORMAT_VERSION})",
                hint="upgrade tako",
            )
        raise bad(f'"version" must be {FORMAT_VERSION}')
    if set(doc) != {"version", "envs"} or not isinstance(doc["envs"], dict):
        raise bad('expected exactly the keys "version" and "envs" (an object)')
    envs: dict[str, EnvSecrets] = {}
    for env, entry in doc["envs"].items():
        if not ENV_RE.fullmatch(env):
            raise bad(f"invalid env name {env!r}")
        if not isinstance(entry, dict) or set(entry) != {"key_id", "secrets"}:
            raise bad(f'env {env}: expected exactly the keys "key_id" and "secrets"')
        key_id, secrets = entry["key_id"], entry["secrets"]
        if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
            raise bad(f"env {env}: key_id must be 8 lowercase hex digits")
        if not isinstance(secrets, dict):
            raise bad(f'env {env}: "secrets" must be an object')
        for name, value in secrets.items():
            if not NAME_RE.fullmatch(name):
                raise bad(f"env {env}: invalid secret name {name!r}")
            if not isinstance(value, str):
                raise bad(f"env {env}: secret {name} must be a string")
        envs[env] = EnvSecrets(key_id=key_id, secrets=dict(secrets))
    return envs


def render(envs: dict[str, EnvSecrets]) -> str:
    doc = {
        "version": FORMAT_VERSION,
        "envs": {env: {"key_id": e.key_id, "secrets": e.secrets} for env, e in envs.items()},
    }
    # Sorted keys + fixed indent: a change to one secret is a one-line diff.
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write(path: Path, envs: dict[str, EnvSecrets], expected_fingerprint: str | None) -> str:
    """Replace the file atomically; returns the new fingerprint.

    Refuses when the file changed on disk since it was read (another `tako secrets` or an editor),
    rather than silently dropping that change.
    """
    current = _fingerprint_on_disk(path)
    if current != expected_fingerprint:
        raise SecretsError(
            f"{path} changed on disk since it was read; nothing was written",
            hint="run the command again (another tako process or an editor changed the file)",
        )
    data = render(envs).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(path))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as err:
        raise SecretsError(f"cannot write {path}: {err.strerror}; the file is unchanged") from err
    return hashlib.sha256(data).hexdigest()


def _mode_for(path: Path) -> int:
    # Keep the mode of the file being replaced; a new one is an ordinary, committable file
    # (mkstemp alone would leave it 0600).
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


def _fingerprint_on_disk(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SecretsError(f"cannot read {path}: {err.strerror}") from err


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets you open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
