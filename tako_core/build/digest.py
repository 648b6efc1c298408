"""Content hashes of a source set: one per file, and one for the whole set.

The set's hash covers every entry's kind, mode, path and content (or link target), so it changes
exactly when the extracted tree would differ. It names dirty and non-git builds and keys the cache.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from tako_core.build.blocking import check
from tako_core.build.errors import SourceSetError
from tako_core.build.sourceset import Entry


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


@dataclass(frozen=True)
class SourceDigest:
    files: dict[str, FileDigest]  # regular files by path
    content_hash: str  # sha256 hex of the whole set


def digest_source_set(root: Path, entries: tuple[Entry, ...], cancel: threading.Event) -> SourceDigest:
    whole = hashlib.sha256(b"tako-source-v1\0")
    files: dict[str, FileDigest] = {}
    for entry in entries:
        check(cancel)
        if entry.kind == "file":
            files[entry.path] = file_digest(root / entry.path, entry.path)
            payload = files[entry.path].sha256
        else:
            payload = entry.link or ""
        # NUL-separated: a path may contain anything but NUL.
        record = f"{entry.kind}\0{entry.mode:o}\0{entry.path}\0{payload}\0"
        whole.update(record.encode("utf-8", "surrogateescape"))
    return SourceDigest(files, whole.hexdigest())


def file_digest(path: Path, rel: str) -> FileDigest:
    try:
        with path.open("rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
            return FileDigest(sha, f.tell())
    except OSError as exc:
        raise SourceSetError(
            f"cannot read {rel}: {exc.strerror}",
            hint="make it readable, or add it to .gitignore if it should not be deployed",
        ) from exc
