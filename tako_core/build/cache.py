"""The local artifact cache: one file per distinct artifact, newest few kept.

An artifact is identified by everything that shapes its bytes except the date: app, env, build id,
the source set's content hash (taken after the build command), `[vars]` and the codec. A hit is
therefore byte-for-byte what packing again would give (up to the date), and is reused as is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path

import platformdirs

KEEP = 10
STALE_TEMP_SECONDS = 3600.0  # a temp file this old belongs to a crashed build, not a running one
SUFFIXES = {"zst": ".tar.zst", "gz": ".tar.gz"}


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("tako")) / "artifacts"


def artifact_path(
    cache_dir: Path,
    *,
    app: str,
    env: str,
    build: str,
    content_hash: str,
    variables: dict[str, str],
    codec: str,
) -> Path:
    identity = json.dumps(
        {"app": app, "env": env, "build": build, "content": content_hash, "vars": variables, "codec": codec},
        sort_keys=True,
    )
    key = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_dir / f"{_slug(app)}-{_slug(env)}-{build}-{key}{SUFFIXES[codec]}"


def mark_used(path: Path) -> None:
    """Make a hit count as new, so pruning keeps what is being deployed."""
    os.utime(path)


def prune(cache_dir: Path, keep: int = KEEP) -> None:
    """Delete all but the `keep` most recently made or used artifacts, and stale temp files."""
    artifacts: list[tuple[float, Path]] = []
    now = time.time()
    for path in cache_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another tako may be pruning too
            mtime = path.stat().st_mtime
            if path.name.endswith(".tmp"):
                if now - mtime > STALE_TEMP_SECONDS:
                    path.unlink()
            elif path.name.endswith(tuple(SUFFIXES.values())):
                artifacts.append((mtime, path))
    artifacts.sort(reverse=True)
    for _, path in artifacts[keep:]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name)[:40] or "_"
