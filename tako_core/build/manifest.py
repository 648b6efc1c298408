"""`.tako-manifest.json`: what an artifact holds, readable on the server without unpacking it all.

It is the archive's first member. `vars` are the plain `[vars]` of tako.toml; secrets never reach
the build, so they cannot appear here. Keys are sorted and there is no wall-clock time, so the
same source gives the same manifest bytes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tako_core.build.digest import SourceDigest
from tako_core.build.sourceset import Entry
from tako_core.build.version import GitState

SCHEMA = 1


def make_manifest(
    *,
    app: str,
    env: str,
    build: str,
    git: GitState | None,
    created_at: int,
    variables: dict[str, str],
    entries: tuple[Entry, ...],
    digest: SourceDigest,
) -> bytes:
    document = {
        "schema": SCHEMA,
        "app": app,
        "env": env,
        "build": build,
        "git": None if git is None else {"commit": git.commit, "dirty": git.dirty},
        "created_at": datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "content_sha256": digest.content_hash,
        "vars": variables,
        "file_count": len(digest.files),
        "files": {path: file.sha256 for path, file in digest.files.items()},
        "links": {entry.path: entry.link for entry in entries if entry.kind == "symlink"},
    }
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("ascii")
