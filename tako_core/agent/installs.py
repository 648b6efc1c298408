"""The install step, with its outputs reused across releases whose dependency inputs did not change.

The content key is the install command plus the files it reads: the well-known lockfiles at the
release's top level and the app's `install_inputs` (paths or globs, relative to the release). The first
release with a key runs the install in installs/<key>/, a hard-linked copy of the release, so that what
the install writes (a venv with absolute paths in its scripts' shebangs, node_modules) lives at a path
that outlasts the release; the top-level entries it added become symlinks in the release, and every
later release with the same key gets the same symlinks at once. An installs/<key>/ stays while a
release uses it (pruning removes the rest). An install that reads no input file at all runs in the
release every time, as its key would be the command alone. Package managers' caches live in cache/
under the app's directory, so a changed lockfile downloads only what is new.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from tako_core.agent import procs
from tako_core.agent.accounts import Account, chown_tree
from tako_core.agent.compat import WaitTimeout
from tako_core.agent.contract import BAD_REQUEST, FAILED, ProtocolError
from tako_core.agent.layout import AppLayout
from tako_core.mask import Masker

INSTALL_TIMEOUT = 1800.0
TAIL_LINES = 20
WELL_KNOWN_INPUTS = (
    "requirements*.txt",
    "pyproject.toml",
    "uv.lock",
    "poetry.lock",
    "Pipfile.lock",
    "package.json",
    "package-lock.json",
    "bun.lock",
    "bun.lockb",
    "yarn.lock",
    "pnpm-lock.yaml",
)
OUTPUTS = ".tako-outputs"  # in installs/<key>/, written last: the entries the install added, one a line
USES = ".tako-install"  # in a release: the key of the install it links to
_CACHES = {
    "PIP_CACHE_DIR": "pip",
    "UV_CACHE_DIR": "uv",
    "npm_config_cache": "npm",
    "BUN_INSTALL_CACHE_DIR": "bun",
    "YARN_CACHE_FOLDER": "yarn",
}


async def install(
    layout: AppLayout,
    release: Path,
    command: str,
    inputs: Sequence[str],
    env: dict[str, str],
    masker: Masker,
    on_line: Callable[[str], None],
    account: Account | None,
) -> None:
    """Give `release` the outputs of `command` (run as `account`): reused when an install with the
    same key exists."""
    env = {**{name: str(layout.cache / sub) for name, sub in _CACHES.items()}, **env}  # the app's vars win
    key = await asyncio.to_thread(content_key, release, command, inputs)
    if key is None:
        await run_install(release, command, env, masker, on_line, account)
        return
    shared = layout.installs / key
    outputs = _finished(shared)
    if outputs is None:
        outputs = await _build(shared, release, command, env, masker, on_line, account)
    else:
        on_line(f"tako: reusing the install {key[:12]} (same command and inputs): {', '.join(outputs)}")
    for name in outputs:
        _replace_with_link(release / name, shared / name)
    (release / USES).write_text(key + "\n")


def input_files(release: Path, inputs: Sequence[str]) -> list[Path]:
    """The files the install reads, as far as tako can tell: the well-known lockfiles and `inputs`."""
    found: set[Path] = set()
    for pattern in (*WELL_KNOWN_INPUTS, *inputs):
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise ProtocolError(BAD_REQUEST, f"install input {pattern!r} is not inside the release")
        for path in release.glob(pattern):
            if path.is_file():
                found.add(path)
            elif path.is_dir():
                found.update(p for p in path.rglob("*") if p.is_file())
    return sorted(found)


def content_key(release: Path, command: str, inputs: Sequence[str]) -> str | None:
    """The install's key, or None when it reads no input file that tako can see."""
    files = input_files(release, inputs)
    if not files:
        return None
    digest = hashlib.sha256(b"tako-install-1\0" + command.encode() + b"\0")
    for path in files:
        digest.update(path.relative_to(release).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _finished(shared: Path) -> list[str] | None:
    """The outputs of a finished install at `shared`, or None (never built, or an attempt cut short)."""
    try:
        return (shared / OUTPUTS).read_text().split("\n")[:-1]
    except OSError:
        return None


async def _build(
    shared: Path,
    release: Path,
    command: str,
    env: dict[str, str],
    masker: Masker,
    on_line: Callable[[str], None],
    account: Account | None,
) -> list[str]:
    try:
        await asyncio.to_thread(_copy, release, shared)
        if account is not None:  # the install writes here as the app's user
            await asyncio.to_thread(chown_tree, str(shared), account)
        before = set(os.listdir(shared))
        await run_install(shared, command, env, masker, on_line, account)
        outputs = sorted(set(os.listdir(shared)) - before)
        for name in before:  # the release's own files: each release brings its own
            _remove(shared / name)
        tmp = shared / f".{OUTPUTS}.tmp"
        tmp.write_text("".join(f"{name}\n" for name in outputs))
        os.replace(tmp, shared / OUTPUTS)
    except BaseException:
        shutil.rmtree(shared, ignore_errors=True)
        raise
    return outputs


def _copy(release: Path, shared: Path) -> None:
    """A hard-linked copy of the release at `shared` (replacing an attempt that did not finish)."""
    if shared.exists():
        shutil.rmtree(shared)
    shared.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(release, shared, symlinks=True, copy_function=os.link)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _replace_with_link(path: Path, target: Path) -> None:
    _remove(path)
    os.symlink(os.path.relpath(target, path.parent), path)


def prune(layout: AppLayout) -> list[str]:
    """Remove the installs no release links to (the caller holds the app's lock: none is being built)."""
    if not layout.installs.is_dir():
        return []
    used = set()
    for release in layout.releases.iterdir():
        try:
            used.add((release / USES).read_text().strip())
        except OSError:
            continue
    removed = [shared.name for shared in layout.installs.iterdir() if shared.name not in used]
    for name in removed:
        shutil.rmtree(layout.installs / name, ignore_errors=True)
    return removed


async def run_install(
    cwd: Path,
    command: str,
    env: dict[str, str],
    masker: Masker,
    on_line: Callable[[str], None],
    account: Account | None,
) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = await procs.spawn(command, cwd, env, account=account)
    assert proc.stdout is not None

    async def pump() -> None:
        assert proc.stdout is not None
        async for line in procs.lines(proc.stdout, masker):
            tail.append(line)
            on_line(line)

    try:
        await asyncio.wait_for(asyncio.gather(pump(), proc.wait()), INSTALL_TIMEOUT)
    except WaitTimeout:
        await procs.kill_group(proc.pid, 5.0)
        raise ProtocolError(FAILED, f"install timed out after {INSTALL_TIMEOUT:.0f} s") from None
    except asyncio.CancelledError:
        await procs.kill_group(proc.pid, 5.0)
        raise
    if proc.returncode != 0:
        raise ProtocolError(
            FAILED,
            f"install exited with {proc.returncode}" + "".join(f"\n  {line}" for line in tail),
            hint="fix the install command; the release was not marked complete",
            exit_code=proc.returncode,
            tail=list(tail),
        )
