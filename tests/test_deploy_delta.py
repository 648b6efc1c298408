"""Only what changed is sent: a redeploy uploads the changed files, the agent copies the rest from a
kept release (verifying each), and falls back to the whole artifact when a kept release changed."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from pathlib import Path

from tako_core.build import build_artifact
from tako_core.deploy.delta import Deltas
from tests.deploykit import app_dir, get, sample_app, tako
from tests.fleet import Fleet, FleetServer

RELEASE = "python3 migrate.py"


def _tree(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file, the agent's marker left out."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and not p.is_symlink()
        and p.name not in (".complete", ".tako-manifest.json")
        and ".git" not in p.relative_to(directory).parts
    }


def _owners_and_modes(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (uid, gid, mode) of everything in a release (links themselves), but the marker."""
    found = {}
    for p in [directory, *directory.rglob("*")]:
        if p.name != ".complete":
            st = p.lstat()
            found[p.relative_to(directory).as_posix()] = (st.st_uid, st.st_gid, st.st_mode)
    return found


def _deploy(cfg: Path, servers: list[FleetServer], version: str) -> list[dict[str, object]]:
    run = tako("deploy", "--json", "--yes", cwd=cfg.parent)
    assert run.code == 0, run.stderr
    for s in servers:
        assert get(s).startswith(version + " ")
    return [e for e in run.events()]


def _with_assets(tmp_path: Path, servers: list[FleetServer], version: str, extra: str = "") -> Path:
    cfg = sample_app(tmp_path, servers, version=version, release=RELEASE, extra=extra)
    assets = cfg.parent / "assets"
    if not assets.exists():
        assets.mkdir()
        for i in range(4):  # incompressible: the delta must be what makes the upload small
            (assets / f"blob{i}.bin").write_bytes(os.urandom(256 * 1024))
        (assets / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (assets / "run.sh").chmod(0o755)
        (assets / "link").symlink_to("blob0.bin")
    return cfg


def test_a_redeploy_sends_only_the_changed_files(fleet: Fleet, tako_home: Path, tmp_path: Path) -> None:
    servers = fleet(2)
    first = _deploy(_with_assets(tmp_path, servers, "v1"), servers, "v1")
    full = next(e["size"] for e in first if e["event"] == "ArtifactBuilt")
    assert isinstance(full, int)
    assert full > 1_000_000

    events = _deploy(_with_assets(tmp_path, servers, "v2"), servers, "v2")
    build = next(e["build"] for e in events if e["event"] == "ArtifactBuilt")
    first_build = next(e["build"] for e in first if e["event"] == "ArtifactBuilt")
    for s in servers:
        # Assembled from a kept release + the delta, yet owned and moded as the unpacked one (the
        # app's own user, with the agent's umask 077 not narrowing the copies).
        assembled = _owners_and_modes(app_dir(s) / "releases" / str(build))
        unpacked = _owners_and_modes(app_dir(s) / "releases" / str(first_build))
        assert assembled == unpacked
        app_user = pwd.getpwnam("tako-web-production").pw_uid
        assert {uid for uid, _gid, _mode in assembled.values()} == {app_user}
        sent = [e for e in events if e["event"] == "UploadProgress" and e["server"] == s.name]
        assert sent
        assert all(int(str(e["total"])) < full // 20 for e in sent), sent
        done = [
            e
            for e in events
            if e["event"] == "PhaseChanged" and e["server"] == s.name and e["phase"] == "Upload"
        ]
        assert "changed of" in str(done[-1]["detail"])
        release = app_dir(s) / "releases" / str(build)
        assert _tree(release) == _tree(tmp_path / "app")
        assert os.readlink(release / "assets" / "link") == "blob0.bin"
        assert os.stat(release / "assets" / "run.sh").st_mode & 0o111
        assert not [p for p in (Path(s.root) / "uploads").rglob("*") if not p.is_dir()]


def test_a_changed_kept_release_falls_back_to_the_whole_artifact(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    servers = fleet(2)
    _deploy(_with_assets(tmp_path, servers, "v1"), servers, "v1")
    # As an install step writing into its release would: the kept copy no longer matches its manifest.
    current = app_dir(servers[1]) / "current"
    (current / "assets" / "blob2.bin").write_bytes(b"changed on the server")

    events = _deploy(_with_assets(tmp_path, servers, "v2"), servers, "v2")
    notices = [e for e in events if e["event"] == "Notice" and e["server"] == "s2"]
    assert any("sending the whole artifact" in str(e["message"]) for e in notices), notices
    build = next(e["build"] for e in events if e["event"] == "ArtifactBuilt")
    for s in servers:
        release = app_dir(s) / "releases" / str(build)
        assert (release / "assets" / "blob2.bin").read_bytes() == (
            tmp_path / "app/assets/blob2.bin"
        ).read_bytes()
        assert not [p for p in (Path(s.root) / "uploads").rglob("*") if not p.is_dir()]


def _releases(server: FleetServer) -> list[Path]:
    return [p for p in (app_dir(server) / "releases").iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_a_release_is_recorded_as_unpacked_before_its_install(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """The stat record beside a release holds every shipped file as it is on the disk, is the agent's
    alone, and leaves out what the install step then changed."""
    servers = fleet(1)
    # The install step writes into a shipped file.
    _deploy(
        _with_assets(tmp_path, servers, "v1", 'install = "echo installed >> assets/run.sh"\n'), servers, "v1"
    )
    (release,) = _releases(servers[0])
    record = release.parent / f".{release.name}.stamps"
    st = record.lstat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o600)
    stamps = json.loads(record.read_text())
    shipped = json.loads((release / ".tako-manifest.json").read_text())["files"]
    assert set(stamps) == set(shipped)
    for rel, (size, mtime_ns, ctime_ns, ino, sha) in stamps.items():
        now = (release / rel).lstat()
        same = (now.st_size, now.st_mtime_ns, now.st_ctime_ns, now.st_ino) == (size, mtime_ns, ctime_ns, ino)
        assert same == (rel != "assets/run.sh"), rel
        assert sha == shipped[rel]


def test_a_kept_file_changed_behind_its_record_falls_back_to_the_whole_artifact(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> None:
    """Same size, mtime put back: only ctime tells, and it does. A garbled or missing record means
    hashing every copy, and the deploy still sends only what changed."""
    servers = fleet(3)
    _deploy(_with_assets(tmp_path, servers, "v1"), servers, "v1")
    kept = app_dir(servers[0]) / "current" / "assets" / "blob2.bin"
    before = kept.stat()
    kept.write_bytes(bytes(before.st_size))
    os.utime(kept, ns=(before.st_atime_ns, before.st_mtime_ns))
    (release,) = _releases(servers[1])
    (release.parent / f".{release.name}.stamps").write_text('{"assets/blob1.bin": [1, 2')
    (release,) = _releases(servers[2])
    (release.parent / f".{release.name}.stamps").unlink()

    events = _deploy(_with_assets(tmp_path, servers, "v2"), servers, "v2")
    build = next(e["build"] for e in events if e["event"] == "ArtifactBuilt")
    for s in servers:
        notices = [e for e in events if e["event"] == "Notice" and e["server"] == s.name]
        stale = any("sending the whole artifact" in str(e["message"]) for e in notices)
        assert stale == (s is servers[0]), notices
        if s is not servers[0]:
            uploaded = [e for e in events if e["event"] == "PhaseChanged" and e["server"] == s.name]
            assert "changed of" in str([e for e in uploaded if e["phase"] == "Upload"][-1]["detail"])
        assert _tree(app_dir(s) / "releases" / str(build)) == _tree(tmp_path / "app")


async def test_a_delta_of_the_gzip_artifact_uses_the_hashes_asked_with_the_zstd_one(tmp_path: Path) -> None:
    """Servers without zstd get the gzip artifact, after the question went out with the zstd one's hashes."""
    project = tmp_path / "app"
    project.mkdir()
    for i in range(4):
        (project / f"blob{i}.bin").write_bytes(os.urandom(64 * 1024))
    zst = await build_artifact(project, "web", "production", None, {}, print, tmp_path, codec="zst")
    gz = await build_artifact(project, "web", "production", None, {}, print, tmp_path, codec="gz")
    deltas = Deltas()
    try:
        wanted = deltas.hashes(zst)
        delta = await deltas.delta(gz, (wanted[0],))
        assert delta is not None
        assert delta.path.name.endswith(".tar.gz")
        assert len(delta.base) == 3
    finally:
        deltas.close()
