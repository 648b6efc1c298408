"""Release directories: prepare (unpack + install), completeness, cleanup, `current`, pruning."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tako_core.agent import delta, installs, stamps
from tako_core.agent.accounts import chown_tree
from tako_core.agent.contract import BAD_REQUEST, FAILED, NOT_FOUND, ProtocolError, upload_name
from tako_core.agent.extract import extract
from tako_core.agent.layout import AppLayout
from tako_core.mask import Masker

COMPLETE = ".complete"  # written last: a release without it is partial


def is_complete(layout: AppLayout, build: str) -> bool:
    return (layout.release(build) / COMPLETE).is_file()


def resolve_upload(uploads: Path, name: str) -> Path:
    """The uploaded file `name` (a path under the uploads directory, or absolute), no further out."""
    path = (uploads / name).resolve()
    if not path.is_relative_to(uploads.resolve()):
        raise ProtocolError(BAD_REQUEST, f"upload {name!r} is not in {uploads}")
    if not path.is_file():
        raise ProtocolError(NOT_FOUND, f"no upload {path.name} in {uploads}", hint="upload it again")
    return path


async def prepare(
    layout: AppLayout,
    build: str,
    upload: Path,
    install: str | None,
    install_inputs: list[str],
    env: dict[str, str],
    masker: Masker,
    on_line: Callable[[str], None],
    base: dict[str, object] | None = None,
) -> None:
    """Unpack into a temp dir (with `base`, a delta archive completed from kept releases: agent/delta.py),
    rename into releases/<build> (owned by the app's user either way), run install there, mark complete."""
    account = layout.create()
    target = layout.release(build)
    if is_complete(layout, build):
        return
    if layout.current_build() == build:
        raise ProtocolError(FAILED, f"{build} is current but incomplete; refusing to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{build}-", dir=layout.releases))

    def unpack() -> None:
        links = extract(upload, tmp)
        if base is not None:
            delta.assemble(tmp, links, base, kept(layout))

    extracting = asyncio.ensure_future(asyncio.to_thread(unpack))
    try:
        try:
            await asyncio.shield(extracting)
        except asyncio.CancelledError:
            await asyncio.wait([extracting])  # a thread cannot be stopped: let it end before the rmtree
            raise
        (tmp / COMPLETE).unlink(missing_ok=True)  # only the agent writes the marker
        if account is not None:
            await asyncio.to_thread(chown_tree, str(tmp), account)
        if target.exists():
            await asyncio.to_thread(shutil.rmtree, target)  # a partial earlier attempt
        os.rename(tmp, target)
        # Before install, which may write into the release: what it changes is then off the record.
        await asyncio.to_thread(stamps.record, target, delta.shipped(target))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if install and install.strip():
        await installs.install(layout, target, install, install_inputs, env, masker, on_line, account)
    _mark_complete(target)
    upload.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink; the upload did its job)


def _mark_complete(target: Path) -> None:
    (target / COMPLETE).write_text(f"{time.time()}\n")


def cleanup(layout: AppLayout, uploads: Path, build: str) -> bool:
    """Remove releases/<build> and any upload of it (the caller checked it is neither current nor running)."""
    for upload in uploads.glob(f"{upload_name(layout.base.parent.name, layout.base.name, build)}.*"):
        upload.unlink(missing_ok=True)
    layout.deployed(build).unlink(missing_ok=True)
    target = layout.release(build)
    stamps.path_of(target).unlink(missing_ok=True)
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


def point_current(layout: AppLayout, build: str) -> str | None:
    """Swap `current` to releases/<build> atomically; returns the build it pointed at before."""
    if not is_complete(layout, build):
        raise ProtocolError(NOT_FOUND, f"release {build} is not prepared")
    previous = layout.current_build()
    tmp = layout.base / f".current.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.join("releases", build), tmp)
    os.replace(tmp, layout.current)
    return previous


def created_at(layout: AppLayout, build: str) -> float:
    path = layout.release(build)
    marker = path / COMPLETE
    return (marker if marker.exists() else path).stat().st_mtime


def kept(layout: AppLayout) -> list[Path]:
    """The complete releases' directories, the current one first, then newest first."""
    current = layout.current_build()
    names = sorted(builds(layout), key=lambda b: b != current)
    return [layout.release(b) for b in names if is_complete(layout, b)]


def builds(layout: AppLayout) -> list[str]:
    """Release names, newest first (hidden temp dirs excluded)."""
    if not layout.releases.is_dir():
        return []
    names = [p.name for p in layout.releases.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=lambda b: created_at(layout, b), reverse=True)


def prune(layout: AppLayout, keep: int, protected: set[str]) -> list[str]:
    """Remove all but the newest `keep` releases, never one in `protected`; returns those removed.
    Also removes temp dirs a crashed prepare left (the caller holds the app's lock: none is live)."""
    for leftover in layout.releases.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    removed = []
    for build in builds(layout)[max(keep, 0) :]:
        if build not in protected:
            shutil.rmtree(layout.release(build), ignore_errors=True)
            stamps.path_of(layout.release(build)).unlink(missing_ok=True)
            layout.deployed(build).unlink(missing_ok=True)
            removed.append(build)
    installs.prune(layout)
    return removed
