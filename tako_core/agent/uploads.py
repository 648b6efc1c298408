"""Artifacts sent over the agent's own channel, in chunks (Op.UPLOAD), rather than over SFTP.

Each chunk is a request line with `raw: n`, then n bytes (no base64: the wire carries the artifact's
own size). Each is written at its offset into ROOT/uploads/<app>/<env>/<file>.part (the agent's own
files: a client never writes there); the last one carries the total size and renames the file to
<file> once every byte is there. The server starts a connection's requests in the order they arrive
and a chunk is written before its handler first yields, so a `prepare` sent right after the last
chunk finds the whole file.
"""

from __future__ import annotations

import os
from pathlib import Path

from tako_core.agent.contract import BAD_REQUEST, FAILED, ProtocolError
from tako_core.agent.layout import check_name


def part_path(uploads: Path, name: str) -> Path:
    """Where the chunks of upload `name` go: `<app>/<env>/<file>` (contract.upload_name and a suffix),
    one directory per app and env, made here; the file a bare, non-hidden name."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[2] or parts[2].startswith(".") or "\0" in name or len(name) > 300:
        raise ProtocolError(BAD_REQUEST, f"upload name {name[:80]!r} must be <app>/<env>/<file name>")
    directory = uploads / check_name("app", parts[0]) / check_name("env", parts[1])
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory / f"{parts[2]}.part"


def write_chunk(uploads: Path, name: str, offset: int, chunk: bytes, size: int | None) -> None:
    """Write one chunk at `offset`; with `size` (the last chunk) check it and publish the file."""
    part = part_path(uploads, name)
    # The first chunk starts the file afresh: a .part left by a cut upload must not leak into this one.
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_TRUNC if offset == 0 else 0)
    fd = os.open(part, flags, 0o600)
    try:
        os.pwrite(fd, chunk, offset)
        if size is not None:
            written = os.fstat(fd).st_size
            if written != size:
                raise ProtocolError(FAILED, f"upload {name} is incomplete: {written} of {size} bytes")
            os.fsync(fd)
    finally:
        os.close(fd)
    if size is not None:
        os.replace(part, part.with_suffix(""))
