"""AES-256-GCM for single secret values, key ids, and the exported key form.

A value is stored as base64(nonce12 || ciphertext+tag). The associated data binds the app, the env
and the secret's name, so a ciphertext copied to another name, env or app fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_HEX = 8
EXPORT_PREFIX = "tako1"


class DecryptionFailed(Exception):
    """The value does not decrypt under this key and binding (tampered, moved, or another key)."""


class MalformedKey(ValueError):
    """An exported key string is not in the `tako1:<key_id>:<key>` form or its id does not match."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def key_id(key: bytes) -> str:
    """A short public name for a key: safe to commit, reveals nothing of the key (one-way hash)."""
    return hashlib.sha256(b"tako secrets key id\0" + key).hexdigest()[:KEY_ID_HEX]


def _associated_data(app: str, env: str, name: str) -> bytes:
    # JSON of a list is an unambiguous encoding: ("a/b", "c") and ("a", "b/c") differ.
    return json.dumps(["tako-secret", 1, app, env, name], separators=(",", ":")).encode()


def encrypt(key: bytes, app: str, env: str, name: str, value: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, value.encode(), _associated_data(app, env, name))
    return base64.b64encode(nonce + sealed).decode("ascii")


def decrypt(key: bytes, app: str, env: str, name: str, stored: str) -> str:
    try:
        blob = base64.b64decode(stored.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise DecryptionFailed("not valid base64") from err
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("too short to be an encrypted value")
    try:
        plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated_data(app, env, name))
    except InvalidTag as err:
        raise DecryptionFailed("authentication tag mismatch") from err
    try:
        return plain.decode()
    except UnicodeDecodeError as err:  # only reachable with a forged value under the right key
        raise DecryptionFailed("not UTF-8") from err


def export_key(key: bytes) -> str:
    """The form users paste into `TAKO_SECRETS_KEY_<ENV>` or `tako secrets key import`."""
    encoded = base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")
    return f"{EXPORT_PREFIX}:{key_id(key)}:{encoded}"


def parse_exported_key(text: str) -> bytes:
    """The key inside an exported string. Error messages never repeat the input: it is a secret."""
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] != EXPORT_PREFIX:
        raise MalformedKey(f"expected the form {EXPORT_PREFIX}:<key id>:<key>")
    _, claimed_id, encoded = parts
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as err:
        raise MalformedKey("the key part is not base64url") from err
    if len(key) != KEY_BYTES:
        raise MalformedKey(f"the key must be {KEY_BYTES} bytes, this one has {len(key)}")
    if key_id(key) != claimed_id:
        raise MalformedKey("the key id does not match the key (the text was truncated or altered)")
    return key
