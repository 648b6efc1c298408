"""The router's fast HTTP parser on a server whose python3 lacks it: the httptools wheel matching the
server's Python, machine and libc, fetched by this client with pip (cached) and unpacked into the
agent's `bin/lib` (a C extension cannot be imported from a zip), where the agent finds it.

Anything that stops the fetch (no pip beside this client, offline, no wheel for that Python or
machine, musl) leaves the agent on its pure-Python parser: a reason to say, never an error.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REQUIREMENT = "httptools>=0.6,<1"
FETCH_TIMEOUT = 120.0
_OLDEST_GLIBC = 17  # manylinux2014: the oldest glibc (2.17) a current wheel may ask for

# Run on the server (python3 on any PATH): what the wheel must fit, one line.
PROBE = (
    "python3 -c 'import sys, platform, importlib.util as u; "
    'print(sys.implementation.name, "%d.%d" % sys.version_info[:2], platform.machine(), '
    '"-".join(platform.libc_ver()) or "-", int(u.find_spec("httptools") is not None))\' 2>/dev/null '
    "|| echo none"
)

# Run on the server as the agent's user, the wheel on stdin: unpacked beside the old one, then
# swapped in; `.wheel` names it, so an unchanged wheel is not sent again.
_UNPACK = """
import io, os, shutil, sys, zipfile
lib, name = sys.argv[1], sys.argv[2]
tmp, old = lib + ".tmp", lib + ".old"
os.makedirs(os.path.dirname(lib), exist_ok=True)
for path in (tmp, old):
    shutil.rmtree(path, ignore_errors=True)
zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())).extractall(tmp)
with open(os.path.join(tmp, ".wheel"), "w") as marker:
    marker.write(name + "\\n")
if os.path.isdir(lib):
    os.rename(lib, old)
os.rename(tmp, lib)
shutil.rmtree(old, ignore_errors=True)
"""


@dataclass(frozen=True)
class ServerPython:
    """The server's python3, as `PROBE` printed it."""

    implementation: str  # "cpython"
    version: str  # "3.11"
    machine: str  # "x86_64", "aarch64"
    libc: str  # "glibc-2.36"; "-" when unknown (musl)
    has_httptools: bool

    @classmethod
    def parse(cls, line: str) -> ServerPython | None:
        parts = line.split()
        if len(parts) != 5:
            return None
        return cls(parts[0], parts[1], parts[2], parts[3], parts[4] == "1")

    @property
    def tag(self) -> str:
        return f"cp{self.version.replace('.', '')}-{self.machine}-{self.libc}"

    def platforms(self) -> list[str] | str:
        """pip's `--platform` values for a wheel this python can load, or why there is none."""
        if self.implementation != "cpython":
            return f"{self.implementation} is not CPython"
        name, _, version = self.libc.partition("-")
        major, _, minor = version.partition(".")
        if name != "glibc" or major != "2" or not minor.isdigit():
            return f"no manylinux wheel fits libc {self.libc!r}"
        newest = max(int(minor), _OLDEST_GLIBC)
        tags = [f"manylinux_2_{m}_{self.machine}" for m in range(newest, _OLDEST_GLIBC - 1, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]  # pip adds manylinux2010 and manylinux1


@dataclass(frozen=True)
class Fetched:
    """The wheel for a server, or why there is none."""

    wheel: Path | None
    reason: str = ""


def fetch_httptools(python: ServerPython, cache_dir: Path) -> Fetched:
    """The httptools wheel for `python`, from `cache_dir/wheels/<tag>/` or downloaded there by pip
    (blocking: run it in a thread)."""
    platforms = python.platforms()
    if isinstance(platforms, str):
        return Fetched(None, platforms)
    cached = cache_dir / "wheels" / python.tag
    found = sorted(cached.glob("httptools-*.whl"))
    if found:
        return Fetched(found[-1])
    cached.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".fetch-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        command += ["--implementation", "cp", "--python-version", python.version, "--dest", tmp]
        command += [arg for platform in platforms for arg in ("--platform", platform)]
        failure = _run([*command, REQUIREMENT])
        wheels = sorted(Path(tmp).glob("httptools-*.whl"))
        if failure or not wheels:
            return Fetched(None, f"pip could not fetch {REQUIREMENT}: {failure or 'no wheel'}")
        target = cached / wheels[-1].name
        wheels[-1].replace(target)  # atomic: a concurrent fetch of the same wheel writes the same bytes
    return Fetched(target)


def unpack_command(lib: str, wheel: Path) -> str:
    """The command that unpacks `wheel` (sent on its stdin) into the agent's `lib` directory."""
    return shlex.join(["python3", "-c", _UNPACK, lib, wheel.name])


def _run(command: list[str]) -> str:
    """ "" when `command` succeeded, else the last line it wrote (or why it could not run)."""
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=FETCH_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {FETCH_TIMEOUT:g} s"
    except OSError as err:
        return str(err)
    if done.returncode == 0:
        return ""
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"
