"""Unpacking an uploaded artifact (tar.zst or tar.gz) safely into a directory.

Only with tarfile's "data" filter: it refuses absolute paths, `..`, links leaving the directory,
devices and set-id bits. A Python without it (before 3.10.12 / 3.11.4) is refused, not trusted.
zstd comes from the `zstandard` module when importable, else from the `zstd` binary.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from tako_core.agent.protocol import FAILED, ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def codecs() -> tuple[str, ...]:
    """The compressions this host can unpack, best first."""
    found = []
    if importlib.util.find_spec("zstandard") is not None or shutil.which("zstd"):
        found.append("zst")
    found.append("gz")
    return tuple(found)


def safe_extraction_available() -> bool:
    return hasattr(tarfile, "data_filter")


def _extract_stream(stream: Any, dest: Path) -> None:  # a file, GzipFile, zstd or pipe reader
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        # Through getattr: the keyword exists only where the data filter does (checked above).
        extractall: Any = archive.extractall
        extractall(dest, filter="data")


def extract(archive: Path, dest: Path) -> None:
    """Unpack `archive` into the existing empty directory `dest`; ProtocolError on any failure."""
    if not safe_extraction_available():
        raise ProtocolError(
            FAILED,
            "this server's Python has no safe tar extraction (tarfile's data filter)",
            hint="upgrade python3 on the server to 3.10.12+ / 3.11.4+ / 3.12+",
        )
    with open(archive, "rb") as f:
        magic = f.read(4)
    try:
        if magic.startswith(GZIP_MAGIC):
            with gzip.open(archive, "rb") as stream:
                _extract_stream(stream, dest)
        elif magic == ZSTD_MAGIC:
            _extract_zstd(archive, dest)
        else:
            raise ProtocolError(FAILED, f"{archive.name} is neither tar.zst nor tar.gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ProtocolError(FAILED, f"cannot unpack {archive.name}: {e}") from None


def _extract_zstd(archive: Path, dest: Path) -> None:
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            _extract_stream(stream, dest)
        return
    binary = shutil.which("zstd")
    if binary is None:
        raise ProtocolError(FAILED, "this server cannot unpack zstd", hint="send a tar.gz artifact")
    with subprocess.Popen([binary, "-dcq", str(archive)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            _extract_stream(proc.stdout, dest)
        finally:
            proc.stdout.close()
            status = proc.wait()
    if status != 0:
        raise ProtocolError(FAILED, f"zstd failed to decompress {archive.name} (exit {status})")
