"""Make the artifact of one deploy: build command, source set, hashes, cache, archive.

Order: read git state → (dirty or no git) hash the source set for the build id → run the build
command in the project directory → collect and hash the source set again (the build changed it)
→ return the cached artifact for that content, or pack a new one. Walking, hashing and packing run
in a worker thread; only the build command's output callbacks run on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tako_core.build.archive import CODECS, Packed, write_archive
from tako_core.build.blocking import in_thread
from tako_core.build.cache import artifact_path, default_cache_dir, mark_used, prune
from tako_core.build.command import run_build_command
from tako_core.build.digest import SourceDigest, digest_source_set, file_digest
from tako_core.build.errors import BuildFailed
from tako_core.build.manifest import make_manifest
from tako_core.build.sourceset import Entry, collect_source_set
from tako_core.build.version import build_id, dirty_reason, read_git_state, source_date
from tako_core.errors import BadInput
from tako_core.mask import Masker
from tako_core.secrets import is_key_var


@dataclass(frozen=True)
class Artifact:
    path: Path  # the archive in the local cache
    build: str  # the build id: a safe directory name, [a-z0-9-]
    sha256: str  # of the archive file
    size: int  # of the archive file, bytes
    cached: bool  # True when an identical artifact was already in the cache
    dirty: str | None = None  # why the build id is not the bare commit (uncommitted changes)
    # Its source set, for packing a delta of it (tako_core/deploy/delta.py) without unpacking it.
    packed: Packed = field(kw_only=True, compare=False, repr=False)


async def build_artifact(
    project_dir: Path,
    app: str,
    env: str,
    build_command: str | None,
    variables: dict[str, str],
    on_output: Callable[[str], None],
    cache_dir: Path | None = None,
    *,
    codec: str = "zst",
    masker: Masker | None = None,
) -> Artifact:
    """Build (or reuse) the artifact of `project_dir` for `app`/`env`.

    The build command's output goes to `on_output` masked by `masker`. `codec` is "zst" (tar.zst)
    or "gz" (tar.gz, for hosts without zstd). Raises BuildFailed
    (build command, git, cache I/O) or SourceSetError / BadInput (the project as it is).
    """
    if codec not in CODECS:
        raise BadInput(f"unknown artifact codec {codec!r}", hint=f"use one of: {', '.join(CODECS)}")
    root = await asyncio.to_thread(_project_root, project_dir)
    git = await read_git_state(root)
    anchor = git.top if git is not None and root.is_relative_to(git.top) else root

    async def scan() -> tuple[tuple[Entry, ...], SourceDigest]:
        entries = await in_thread(lambda cancel: collect_source_set(root, anchor, cancel))
        return entries, await in_thread(lambda cancel: digest_source_set(root, entries, cancel))

    before = None if git is not None and not git.dirty else await scan()
    build = build_id(git, before[1].content_hash if before else "")
    if build_command is not None and build_command.strip():
        inherited = {k: v for k, v in os.environ.items() if not is_key_var(k)}
        build_env = {**inherited, **variables, "ENV": env, "TAKO_BUILD": build}
        await run_build_command(build_command, root, build_env, on_output, masker)
        before = None  # the build may have changed the source set
    entries, digest = before or await scan()

    directory = cache_dir if cache_dir is not None else default_cache_dir()
    dest = artifact_path(
        directory,
        app=app,
        env=env,
        build=build,
        content_hash=digest.content_hash,
        variables=variables,
        codec=codec,
    )
    date = source_date(git, entries)
    manifest = make_manifest(
        app=app,
        env=env,
        build=build,
        git=git,
        created_at=date,
        variables=variables,
        entries=entries,
        digest=digest,
    )

    def store(cancel: threading.Event) -> tuple[str, int, bool]:
        """The cached archive for this content, else a freshly packed one; (sha256, size, cached)."""
        directory.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            mark_used(dest)
            found = file_digest(dest, dest.name)
            return found.sha256, found.size, True
        sha256, size = write_archive(
            dest,
            root=root,
            entries=entries,
            digest=digest,
            manifest=manifest,
            mtime=date,
            codec=codec,
            cancel=cancel,
        )
        prune(directory)
        return sha256, size, False

    try:
        sha256, size, cached = await in_thread(store)
    except OSError as exc:
        raise BuildFailed(
            f"cannot write the artifact to {directory}: {exc.strerror or exc}",
            hint="free some disk space or pass another cache directory",
        ) from exc
    return Artifact(
        dest, build, sha256, size, cached, dirty_reason(git), packed=Packed(root, entries, digest)
    )


def _project_root(project_dir: Path) -> Path:
    if not project_dir.is_dir():
        raise BadInput(
            f"project directory {project_dir} is not a directory", hint="check the path of tako.toml"
        )
    return project_dir.resolve()
