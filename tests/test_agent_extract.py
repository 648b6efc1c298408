"""Unpacking is safe on every host Python: with tarfile's data filter, and without it (Debian 12's 3.11.2)."""

from __future__ import annotations

import io
import posixpath
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

REPO = Path(__file__).resolve().parent.parent
PYTHONS = [sys.executable, "/usr/bin/python3"]
SCRIPT = """
import sys
from pathlib import Path
from tako_core.agent.extract import extract
from tako_core.agent.contract import ProtocolError
try:
    extract(Path(sys.argv[1]), Path(sys.argv[2]))
except ProtocolError as e:
    print("refused:", e)
    sys.exit(3)
"""


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    return info


def unpack(python: str, path: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    dest.mkdir()
    return subprocess.run(
        [python, "-c", SCRIPT, str(path), str(dest)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture(params=PYTHONS, ids=["venv-python", "system-python"])
def python(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_normal_release_unpacks(python: str, tmp_path: Path) -> None:
    path = archive(
        tmp_path / "ok.tar.zst",
        (entry("app", tarfile.DIRTYPE, mode=0o755), b""),
        (entry("app/run.sh", mode=0o4755), b"#!/bin/sh\necho hi\n"),
        (entry("app/link", tarfile.SYMTYPE, link="run.sh"), b""),
    )
    result = unpack(python, path, tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "out/app/run.sh"
    assert run.read_text() == "#!/bin/sh\necho hi\n"
    assert run.stat().st_mode & 0o7777 == 0o755  # the set-uid bit is dropped
    assert (tmp_path / "out/app/link").resolve() == run.resolve()


@pytest.mark.parametrize(
    ("name", "member"),
    [
        ("dotdot", entry("../escape.txt")),
        ("absolute", entry("/tmp/escape.txt")),
        ("symlink-out", entry("evil", tarfile.SYMTYPE, link="../../etc")),
        ("symlink-absolute", entry("evil", tarfile.SYMTYPE, link="/etc/passwd")),
        ("device", entry("dev", tarfile.CHRTYPE)),
        ("hardlink", entry("hard", tarfile.LNKTYPE, link="app.py")),
    ],
)
def test_a_hostile_archive_is_refused(
    python: str, tmp_path: Path, name: str, member: tarfile.TarInfo
) -> None:
    path = archive(tmp_path / f"{name}.tar.zst", (member, b"x"))
    result = unpack(python, path, tmp_path / "out")
    # The data filter turns "/tmp/escape.txt" into "tmp/escape.txt" inside the release; the hand-written
    # check refuses it. Both keep it in; every other hostile entry is refused by both.
    contained = name == "absolute" and result.returncode == 0 and (tmp_path / "out/tmp/escape.txt").exists()
    assert result.returncode == 3 or contained, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/escape.txt").exists()


def cve_2025_4517(path: Path) -> Path:
    """The published proof of concept: a symlink chain longer than PATH_MAX makes `realpath` give
    up (the data filter's check passes on an unpatched 3.11.7) while the kernel follows it all;
    "escape/flag" then lands beside the release."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    here = ""
    for step in steps:
        members.append((entry(posixpath.join(here, comp), tarfile.DIRTYPE, mode=0o755), b""))
        members.append((entry(posixpath.join(here, step), tarfile.SYMTYPE, link=comp), b""))
        here = posixpath.join(here, comp)
    link = posixpath.join(*steps, "l" * 254)
    members.append((entry(link, tarfile.SYMTYPE, link="/".join([".."] * len(steps))), b""))
    members.append((entry("escape", tarfile.SYMTYPE, link=link + "/.."), b""))
    members.append((entry("escape/flag"), b"outside\n"))
    return archive(path, *members)


CRAFTED = {
    "path-through-a-symlink": [
        (entry("sub", tarfile.DIRTYPE, mode=0o755), b""),
        (entry("d", tarfile.SYMTYPE, link="sub"), b""),
        (entry("d/x"), b"x"),
    ],
    "redefined-name": [(entry("a"), b"one"), (entry("a", tarfile.SYMTYPE, link="b"), b"")],
    # The directory's attributes, set at the end, would follow the link that replaced it.
    "directory-redefined-as-a-link": [
        (entry("d", tarfile.DIRTYPE, mode=0o777), b""),
        (entry("d", tarfile.SYMTYPE, link="."), b""),
    ],
    "link-through-a-link": [
        (entry("sub", tarfile.DIRTYPE, mode=0o755), b""),
        (entry("s", tarfile.SYMTYPE, link="sub"), b""),
        (entry("t", tarfile.SYMTYPE, link="s/x"), b""),
    ],
    "link-chain": [
        (entry("b", tarfile.SYMTYPE, link="app.py"), b""),
        (entry("a", tarfile.SYMTYPE, link="b"), b""),
    ],
    # `t` looks inside until `y` (defined later) makes "y/.." the release's parent.
    "link-made-a-link-later": [
        (entry("sub", tarfile.DIRTYPE, mode=0o755), b""),
        (entry("sub/t", tarfile.SYMTYPE, link="y/../../escape.txt"), b""),
        (entry("sub/y", tarfile.SYMTYPE, link="."), b""),
    ],
}


@pytest.mark.parametrize("name", [*sorted(CRAFTED), "cve-2025-4517"])
def test_a_crafted_archive_is_refused(python: str, tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = work / f"{name}.tar.zst"
    if name == "cve-2025-4517":
        cve_2025_4517(path)
    else:
        archive(path, *CRAFTED[name])
    result = unpack(python, path, work / "out")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in work.iterdir()) == sorted(["out", path.name])  # nothing beside the release
