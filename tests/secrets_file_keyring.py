"""A real, file-backed keyring backend for subprocess tests of `tako secrets`.

Selected with `PYTHON_KEYRING_BACKEND=secrets_file_keyring.FileKeyring` (this directory on
PYTHONPATH); entries live in the JSON file named by `TAKO_TEST_KEYRING_FILE`. Test use only: it
stores passwords in the clear.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

PATH_VAR = "TAKO_TEST_KEYRING_FILE"


class FileKeyring(KeyringBackend):
    # Only processes that select it by name ever import this module, so auto-detection never sees it.
    priority = 1.0

    def _path(self) -> Path:
        return Path(os.environ[PATH_VAR])

    def _load(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self._path().read_text())
        except FileNotFoundError:
            return {}
        return data

    def _dump(self, data: dict[str, str]) -> None:
        tmp = self._path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self._path())

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\n{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\n{username}"] = password
        self._dump(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\n{username}", None) is None:
            raise PasswordDeleteError(username)
        self._dump(data)
