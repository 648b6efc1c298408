"""The artifact: source set, build id, determinism, cache, manifest, extraction (real git repos)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from tako_core.build import Artifact, SourceSetError, build_artifact
from tako_core.build.archive import write_archive, write_delta
from tako_core.build.blocking import Abandoned
from tako_core.build.digest import digest_source_set
from tako_core.build.sourceset import collect_source_set
from tako_core.errors import BadInput

COMMIT_DATE = "2025-01-02T03:04:05Z"
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": COMMIT_DATE,
    "GIT_COMMITTER_DATE": COMMIT_DATE,
    "GIT_CONFIG_GLOBAL": os.devnull,  # the machine's config must not change what git does here
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def commit_all(root: Path) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "test")
    return git(root, "rev-parse", "--short=12", "HEAD").strip()


def make_repo(root: Path, files: dict[str, str]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    write(root, files)
    git(root, "init", "-q")
    return commit_all(root)


async def build(
    project: Path,
    cache: Path,
    *,
    command: str | None = None,
    variables: dict[str, str] | None = None,
    env: str = "prod",
    codec: str = "zst",
) -> Artifact:
    return await build_artifact(
        project, "web", env, command, variables or {}, lambda line: None, cache, codec=codec
    )


def extract(artifact: Artifact, dest: Path) -> Path:
    """Unpack as the agent does: decompress, then tarfile with the "data" filter."""
    data = artifact.path.read_bytes()
    if artifact.path.name.endswith(".tar.zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    else:
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(dest, filter="data")
    return dest


def tree(root: Path) -> dict[str, object]:
    """Every path under root: file → (bytes, executable), symlink → target, dir → "dir"."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = (path.read_bytes(), bool(path.stat().st_mode & 0o100))
    return found


def files_in(artifact: Artifact, tmp: Path) -> set[str]:
    out = extract(artifact, tmp)
    return {rel for rel, kind in tree(out).items() if isinstance(kind, tuple) and kind[0] != "link"}


def manifest_of(artifact: Artifact, tmp: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((extract(artifact, tmp) / ".tako-manifest.json").read_text())
    return document


# --- the source set ----------------------------------------------------------------------------


async def test_gitignore_root_nested_and_negation_match_git(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(
        project,
        {
            ".gitignore": "\n".join(
                [
                    "*.log",
                    "!keep.log",
                    "build/",
                    "/root-only.txt",
                    "logs/*",
                    "!logs/.gitkeep",
                    "docs/**/draft.md",
                ]
            ),
            "app.py": "print()\n",
            "debug.log": "x",
            "keep.log": "x",
            "build/out.js": "x",
            "build/keep.log": "x",  # its directory is excluded: no negation can bring it back
            "src/build/gen.js": "x",
            "root-only.txt": "x",
            "sub/root-only.txt": "x",
            "logs/a.txt": "x",
            "logs/.gitkeep": "",
            "docs/draft.md": "x",
            "docs/a/b/draft.md": "x",
            "docs/readme.md": "x",
            "sub/.gitignore": "!debug.log\n*.tmp\n",
            "sub/debug.log": "x",
            "sub/x.tmp": "x",
            "sub/deeper/y.tmp": "x",
            "sub/deeper/z.txt": "x",
            "sub/deeper/.gitignore": "!y.tmp\n",
        },
    )
    git(project, "init", "-q")  # no commit: git is only the oracle here
    expected = set(git(project, "ls-files", "--cached", "--others", "--exclude-standard").split())
    artifact = await build(project, tmp_path / "cache")
    got = files_in(artifact, tmp_path / "out") - {".tako-manifest.json"}
    assert got == expected
    assert {"keep.log", "sub/debug.log", "sub/deeper/y.tmp", "logs/.gitkeep", "sub/root-only.txt"} <= got
    assert not {"debug.log", "build/keep.log", "src/build/gen.js", "docs/a/b/draft.md"} & got


async def test_always_excluded_paths_cannot_be_reincluded(tmp_path: Path) -> None:
    project = tmp_path / "p"
    make_repo(
        project,
        {
            ".gitignore": "!.env\n!node_modules/\n",
            "app.py": "x",
            ".env": "SECRET=1",
            ".env.production": "SECRET=2",
            "sub/.envrc": "x",
            ".tako/secrets.json": "{}",
            "node_modules/a/index.js": "x",
            "web/node_modules/b.js": "x",
            "__pycache__/app.cpython-311.pyc": "x",
            "pkg/__pycache__/m.pyc": "x",
            "pkg/m.py": "x",
            ".venv/bin/python": "x",
            ".tako-manifest.json": '{"forged": true}',
            "sub/.tako-manifest.json": "kept: only the root name is ours",
        },
    )
    artifact = await build(project, tmp_path / "cache")
    got = files_in(artifact, tmp_path / "out")
    assert got == {".gitignore", "app.py", "pkg/m.py", "sub/.tako-manifest.json", ".tako-manifest.json"}
    assert "forged" not in (tmp_path / "out" / ".tako-manifest.json").read_text()


async def test_gitignore_above_the_project_in_a_monorepo_applies(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(
        repo,
        {
            ".gitignore": "dist/\n/apps/web/local.txt\n",
            "apps/.gitignore": "*.bak\n",
            "apps/web/app.py": "x",
            "apps/web/dist/bundle.js": "x",
            "apps/web/local.txt": "x",
            "apps/web/old.bak": "x",
            "apps/api/other.py": "x",
        },
    )
    artifact = await build(repo / "apps" / "web", tmp_path / "cache")
    assert files_in(artifact, tmp_path / "out") == {"app.py", ".tako-manifest.json"}


async def test_symlinks_inside_kept_and_extractable(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"src/a.py": "a", "src/run.sh": "#!/bin/sh\n"})
    (project / "src" / "run.sh").chmod(0o755)
    (project / "rel").symlink_to("src/a.py")
    (project / "assets").symlink_to("src")  # a directory link stays a link, not a copy
    (project / "abs").symlink_to(project / "src" / "a.py")
    (project / "src" / "dangling").symlink_to("missing.txt")
    out = extract(await build(project, tmp_path / "cache"), tmp_path / "out")
    found = tree(out)
    assert found["rel"] == ("link", "src/a.py")
    assert found["assets"] == ("link", "src")
    assert found["abs"] == ("link", "src/a.py")  # absolute inside → stored relative
    assert found["src/dangling"] == ("link", "missing.txt")
    assert found["src/run.sh"] == (b"#!/bin/sh\n", True)
    assert found["src/a.py"] == (b"a", False)


@pytest.mark.parametrize(
    "links",
    [
        {"link": "../outside.txt"},
        {"link": "src/../../outside.txt"},
        {"link": "/etc/hostname"},
        # Lexically inside ("src/outside.txt") but really outside, through src/up -> the project root.
        {"src/up": "..", "sneaky": "src/up/../outside.txt"},
    ],
)
async def test_symlink_leaving_the_project_is_an_error_with_hint(
    tmp_path: Path, links: dict[str, str]
) -> None:
    project = tmp_path / "p"
    write(project, {"src/a.py": "a"})
    (tmp_path / "outside.txt").write_text("x")
    for name, target in links.items():
        (project / name).symlink_to(target)
    with pytest.raises(SourceSetError) as caught:
        await build(project, tmp_path / "cache")
    assert "points outside the project" in caught.value.message
    assert caught.value.hint
    assert caught.value.exit_code == 2


async def test_ignored_outside_symlink_is_fine(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": "x", ".gitignore": "shared\n"})
    (project / "shared").symlink_to("/etc")
    assert files_in(await build(project, tmp_path / "cache"), tmp_path / "out") == {
        ".gitignore",
        "app.py",
        ".tako-manifest.json",
    }


async def test_nothing_to_deploy_and_bad_arguments(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {".gitignore": "*\n", "app.py": "x"})
    with pytest.raises(SourceSetError, match="no files to deploy"):
        await build(project, tmp_path / "cache")
    with pytest.raises(BadInput, match="is not a directory"):
        await build(tmp_path / "missing", tmp_path / "cache")
    with pytest.raises(BadInput, match="codec"):
        await build(project, tmp_path / "cache", codec="xz")


# --- build ids ---------------------------------------------------------------------------------


async def test_build_id_clean_dirty_and_untracked(tmp_path: Path) -> None:
    project = tmp_path / "p"
    commit = make_repo(project, {"app.py": "v1\n", ".gitignore": "*.log\n"})
    assert len(commit) == 12
    assert (await build(project, tmp_path / "c")).build == commit

    (project / "debug.log").write_text("ignored files do not make the tree dirty")
    assert (await build(project, tmp_path / "c")).build == commit

    (project / "app.py").write_text("v2\n")
    dirty = (await build(project, tmp_path / "c")).build
    assert re.fullmatch(rf"{commit}-[0-9a-f]{{8}}", dirty)
    assert (await build(project, tmp_path / "c")).build == dirty  # same content, same id

    (project / "app.py").write_text("v3\n")
    other = (await build(project, tmp_path / "c")).build
    assert other.startswith(commit + "-")
    assert other != dirty

    (project / "app.py").write_text("v1\n")
    assert (await build(project, tmp_path / "c")).build == commit
    (project / "new.py").write_text("untracked")
    assert re.fullmatch(rf"{commit}-[0-9a-f]{{8}}", (await build(project, tmp_path / "c")).build)


async def test_a_dirty_build_says_why(tmp_path: Path) -> None:
    """An untracked .tako/ (tako's own files) makes every build id dirty: the artifact says so, and
    that committing .tako/ is the cure."""
    project = tmp_path / "p"
    commit = make_repo(project, {"app.py": "v1\n"})
    assert (await build(project, tmp_path / "c")).dirty is None
    (project / ".tako").mkdir()
    (project / ".tako" / "secrets.json").write_text("{}")
    (project / "app.py").write_text("v2\n")
    artifact = await build(project, tmp_path / "c")
    assert artifact.build.startswith(commit + "-")
    assert artifact.dirty is not None
    assert artifact.dirty.startswith(f"build {commit} has changes not committed to git: ")
    assert "app.py" in artifact.dirty
    assert ".tako/" in artifact.dirty
    assert "commit .tako/" in artifact.dirty


async def test_build_id_without_git_or_without_commit(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": "x"})
    plain = (await build(project, tmp_path / "c")).build
    assert re.fullmatch(r"[0-9a-f]{12}", plain)
    git(project, "init", "-q")  # a repository without a commit has no commit to name
    assert (await build(project, tmp_path / "c")).build == plain
    (project / "app.py").write_text("y")
    assert (await build(project, tmp_path / "c")).build != plain


# --- determinism, cache, manifest, extraction ------------------------------------------------


async def test_same_source_gives_same_bytes(tmp_path: Path) -> None:
    project = tmp_path / "p"
    make_repo(project, {"app.py": "x\n", "bin/run": "#!/bin/sh\n", "lib/a/b/c.txt": "c"})
    first = await build(project, tmp_path / "c1")
    # Touching files and changing group/other bits must not change the bytes in a clean checkout.
    for path in project.rglob("*"):
        if ".git" not in path.parts and path.is_file():
            os.utime(path, (1_000_000, 1_000_000))
            path.chmod(0o600)
    second = await build(project, tmp_path / "c2")
    assert not second.cached
    assert second.sha256 == first.sha256
    assert second.path.read_bytes() == first.path.read_bytes()
    assert first.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert first.size == first.path.stat().st_size

    gz1 = await build(project, tmp_path / "c1", codec="gz")
    gz2 = await build(project, tmp_path / "c3", codec="gz")
    assert gz1.path.read_bytes() == gz2.path.read_bytes()
    assert gz1.path.name.endswith(".tar.gz")
    assert gz1.build == first.build


async def test_same_bytes_outside_git_and_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": "x\n"})
    assert (await build(project, tmp_path / "c1")).sha256 == (await build(project, tmp_path / "c2")).sha256
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    artifact = await build(project, tmp_path / "c3")
    assert manifest_of(artifact, tmp_path / "out")["created_at"] == "2023-11-14T22:13:20Z"
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(artifact.path.read_bytes())).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert members[0].name == ".tako-manifest.json"
    assert {m.mtime for m in members} == {1_700_000_000}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}


async def test_cache_hit_and_miss(tmp_path: Path) -> None:
    project = tmp_path / "p"
    make_repo(project, {"app.py": "x"})
    cache = tmp_path / "cache"
    first = await build(project, cache)
    inode = first.path.stat().st_ino
    again = await build(project, cache)
    assert again.cached
    assert again.path == first.path
    assert again.sha256 == first.sha256
    assert again.size == first.size
    assert again.path.stat().st_ino == inode  # not re-packed
    assert not (await build(project, cache, variables={"A": "1"})).cached  # vars are in the manifest
    assert not (await build(project, cache, env="staging")).cached
    assert not (await build(project, cache, codec="gz")).cached
    (project / "app.py").write_text("y")
    assert not (await build(project, cache)).cached


async def test_default_cache_is_the_user_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "p"
    write(project, {"app.py": "x"})
    artifact = await build_artifact(project, "web", "prod", None, {}, lambda line: None)
    assert artifact.path.parent == tmp_path / "xdg" / "tako" / "artifacts"


async def test_cache_keeps_the_ten_most_recently_made_or_used(tmp_path: Path) -> None:
    project = tmp_path / "p"
    make_repo(project, {"app.py": "x"})
    cache = tmp_path / "cache"
    base = await build(project, cache)
    others = [await build(project, cache, variables={"N": str(index)}) for index in range(9)]
    for age, artifact in enumerate([base, *others]):  # explicit ages: file times can tie within a tick
        os.utime(artifact.path, (1000 + age, 1000 + age))
    assert (await build(project, cache)).cached  # a hit counts as new use
    newest = await build(project, cache, variables={"N": "new"})
    archives = set(cache.iterdir())
    assert len(archives) == 10
    assert {base.path, newest.path} <= archives
    assert others[0].path not in archives  # the oldest, now that base was used again
    assert not [path for path in archives if path.name.endswith(".tmp")]


async def test_manifest_contents(tmp_path: Path) -> None:
    project = tmp_path / "p"
    make_repo(project, {"app.py": "print('hi')\n", "static/a.css": "body{}\n"})
    (project / "current").symlink_to("static")
    commit = commit_all(project)
    artifact = await build(
        project, tmp_path / "cache", variables={"MODE": "fast", "LOG": "info"}, env="staging"
    )
    manifest = manifest_of(artifact, tmp_path / "out")
    assert manifest["schema"] == 1
    assert manifest["app"] == "web"
    assert manifest["env"] == "staging"
    assert manifest["build"] == artifact.build == commit
    assert manifest["git"] == {"commit": commit, "dirty": False}
    assert manifest["created_at"] == COMMIT_DATE
    assert manifest["vars"] == {"LOG": "info", "MODE": "fast"}
    assert manifest["file_count"] == 2
    assert manifest["files"] == {
        "app.py": hashlib.sha256(b"print('hi')\n").hexdigest(),
        "static/a.css": hashlib.sha256(b"body{}\n").hexdigest(),
    }
    assert manifest["links"] == {"current": "static"}
    assert re.fullmatch(r"[0-9a-f]{64}", str(manifest["content_sha256"]))


@pytest.mark.parametrize("codec", ["zst", "gz"])
async def test_extraction_gives_the_source_set(tmp_path: Path, codec: str) -> None:
    project = tmp_path / "p"
    files = {f"pkg{n % 7}/mod{n}.py": f"# module {n}\n" * (n + 1) for n in range(60)}
    files["bin/serve"] = "#!/bin/sh\nexec python3 -m app\n"
    files["empty/.keep"] = ""
    files["unicode/ünï.txt"] = "ok"
    make_repo(project, files)
    (project / "bin" / "serve").chmod(0o755)
    artifact = await build(project, tmp_path / "cache", codec=codec)
    found = tree(extract(artifact, tmp_path / "out"))
    found.pop(".tako-manifest.json")
    source = tree(project)
    assert found == {
        rel: kind for rel, kind in source.items() if not rel.startswith(".git/") and rel != ".git"
    }
    assert found["bin/serve"] == (files["bin/serve"].encode(), True)


async def test_five_megabyte_app_round_trips(tmp_path: Path) -> None:
    project = tmp_path / "p"
    words = [f"word{n}" for n in range(500)]
    files = {
        f"src/{n:03}.txt": " ".join(words[(n * i) % 500] for i in range(20_000)) + "\n" for n in range(40)
    }
    write(project, files)
    (project / "blob.bin").write_bytes(hashlib.sha256(b"seed").digest() * 32_768)  # 1 MiB, incompressible-ish
    assert sum(p.stat().st_size for p in project.rglob("*") if p.is_file()) > 5_000_000
    artifact = await build(project, tmp_path / "cache")
    assert artifact.size < 5_000_000
    found = tree(extract(artifact, tmp_path / "out"))
    assert found["blob.bin"] == ((project / "blob.bin").read_bytes(), False)
    assert all(found[rel] == (text.encode(), False) for rel, text in files.items())


def test_file_changed_while_packing_is_an_error_and_leaves_no_temp(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"a.txt": "before", "b.txt": "b"})
    root = project.resolve()
    cancel = threading.Event()
    entries = collect_source_set(root, root, cancel)
    digest = digest_source_set(root, entries, cancel)
    (project / "a.txt").write_text("after!")
    out = tmp_path / "out"
    out.mkdir()
    for changed in ("after!", "aft"):  # same-or-longer content, then a shrunk file
        (project / "a.txt").write_text(changed)
        with pytest.raises(SourceSetError, match=r"a\.txt changed while"):
            write_archive(
                out / "x.tar.zst",
                root=root,
                entries=entries,
                digest=digest,
                manifest=b"{}",
                mtime=0,
                codec="zst",
                cancel=cancel,
            )
        assert list(out.iterdir()) == []


def test_abandoned_packing_stops_and_leaves_no_temp(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"a.txt": "a"})
    root = project.resolve()
    cancel = threading.Event()
    entries = collect_source_set(root, root, cancel)
    digest = digest_source_set(root, entries, cancel)
    out = tmp_path / "out"
    out.mkdir()
    cancel.set()  # what in_thread does when the awaiting task is cancelled
    with pytest.raises(Abandoned):
        write_archive(
            out / "x.tar.gz",
            root=root,
            entries=entries,
            digest=digest,
            manifest=b"{}",
            mtime=0,
            codec="gz",
            cancel=cancel,
        )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("codec", ["zst", "gz"])
async def test_a_delta_is_packed_from_the_source_set(tmp_path: Path, codec: str) -> None:
    """Only the files to send, packed again from the project: with the artifact's manifest, date,
    directories and links, so that it plus the files left out is the artifact's tree."""
    project = tmp_path / "p"
    make_repo(project, {"app.py": "app\n", "lib/a.py": "a\n", "lib/b.py": "b\n", "bin/run": "#!/bin/sh\n"})
    (project / "bin" / "run").chmod(0o755)
    (project / "lib" / "link").symlink_to("a.py")
    artifact = await build(project, tmp_path / "cache", codec=codec)
    whole = extract(artifact, tmp_path / "whole")
    hashes = json.loads((whole / ".tako-manifest.json").read_text())["files"]
    dest = tmp_path / f"delta.tar.{codec}"
    (project / "lib" / "a.py").write_text("changed after the build, but left out\n")

    size, left_out = write_delta(artifact.path, artifact.packed, {hashes["lib/b.py"]}, dest)

    assert size == dest.stat().st_size
    assert left_out == {
        "app.py": (hashes["app.py"], 0o644),
        "lib/a.py": (hashes["lib/a.py"], 0o644),
        "bin/run": (hashes["bin/run"], 0o755),
    }
    unpacked = extract(replace(artifact, path=dest), tmp_path / "delta")
    assert (unpacked / ".tako-manifest.json").read_bytes() == (whole / ".tako-manifest.json").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(dest))) as tar:
        assert {m.mtime for m in tar} == {os.stat(whole / "app.py").st_mtime}
    for rel in left_out:
        target = unpacked / rel
        target.write_bytes((whole / rel).read_bytes())
        target.chmod((whole / rel).stat().st_mode)
    assert tree(unpacked) == tree(whole)

    (project / "lib" / "b.py").write_text("changed after the build, and to be sent\n")
    with pytest.raises(SourceSetError, match=r"lib/b\.py changed"):
        write_delta(artifact.path, artifact.packed, {hashes["lib/b.py"]}, dest)


def _tar_bytes(archive: Path) -> bytes:
    data = archive.read_bytes()
    if archive.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return gzip.decompress(data)
