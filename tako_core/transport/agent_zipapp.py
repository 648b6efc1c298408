"""Building the agent's zipapp from this installation: what a server runs, with no PyPI needed.

It holds tako_core/__init__.py, tako_core/mask.py, tako_core/agent/** and h11 (pure Python, for
the router's fallback parser). The name carries a hash of the contents, so a build is reused as long
as nothing changed and a server can tell a stale agent from the name alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path

import tako_core

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b"from tako_core.agent.cli import main\n\nraise SystemExit(main())\n"
BUILD_FILE = "tako_core/agent/BUILD"  # inside the zipapp only
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same sources, same bytes


def sources() -> dict[str, bytes]:
    """Archive name -> contents, sorted, without caches."""
    core = Path(tako_core.__file__).parent
    files = {
        "tako_core/__init__.py": (core / "__init__.py").read_bytes(),
        "tako_core/mask.py": (core / "mask.py").read_bytes(),
        "__main__.py": MAIN,
    }
    for package, base in (("tako_core/agent", core / "agent"), ("h11", _package_dir("h11"))):
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
                files[f"{package}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
    return dict(sorted(files.items()))


def _package_dir(name: str) -> Path:
    """Where package `name` lives, found without importing it (a client need not run it)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed beside tako")
    return Path(spec.submodule_search_locations[0])


def build_id(files: dict[str, bytes] | None = None) -> str:
    """The content hash (8 hex digits) of the zipapp this installation builds."""
    digest = hashlib.sha256()
    for name, data in (sources() if files is None else files).items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:8]


def build_zipapp(dest_dir: Path) -> Path:
    """`dest_dir/tako-agent-<version>-<hash8>.pyz`, built unless it already exists."""
    files = sources()
    build = build_id(files)
    # The agent reports this in hello, so a client can tell a stale agent of the same version.
    files[BUILD_FILE] = build.encode()
    target = dest_dir / f"tako-agent-{tako_core.__version__}-{build}.pyz"
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tako-agent-", suffix=".tmp", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(SHEBANG)
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in files.items():
                    info = zipfile.ZipInfo(name, _EPOCH)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    archive.writestr(info, data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
