"""asyncssh, imported when first used (in a thread: `await load()`), and without its liboqs probe's
subprocesses when the linker cache shows there is no liboqs. tako's modules take `asyncssh` from here.

Importing asyncssh (and cryptography) costs ~60 ms of CPU. A deploy needs it only to connect, which runs
beside the build, so `Connection.open` awaits `load()`: the import overlaps the build rather than
delaying the process's start. `asyncssh` here is the real module to mypy and a stand-in at run time that
imports it on the first attribute read (e.g. a class deriving from an asyncssh class, an `except`).

At import, asyncssh looks for liboqs (post-quantum key exchange) with `ctypes.util.find_library("oqs")`
and `("liboqs")`. On Linux each call runs `ldconfig -p`, then gcc and ld when nothing is found: 20-40 ms
of every tako start. `ldconfig -p` lists /etc/ld.so.cache, so a cache that does not contain "liboqs"
answers that first step without a process; with LD_LIBRARY_PATH or LIBRARY_PATH set (which the gcc
and ld steps search) the real probe runs. What this skips is finding a liboqs that is in none of
those: in a directory gcc searches by default but not registered with ldconfig.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

_OQS = ("oqs", "liboqs")
_LD_CACHE = "/etc/ld.so.cache"


def _without_liboqs() -> bool:
    """True when find_library cannot find liboqs: Linux, no search path set, not in the linker cache."""
    if sys.platform != "linux" or os.environ.get("LD_LIBRARY_PATH") or os.environ.get("LIBRARY_PATH"):
        return False
    try:
        with open(_LD_CACHE, "rb") as cache:
            return b"liboqs" not in cache.read()
    except OSError:
        return False


@contextlib.contextmanager
def _skip_liboqs_probe() -> Iterator[None]:
    if not _without_liboqs():
        yield
        return
    find = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return None if name in _OQS else find(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = find


_lock = threading.Lock()
_module: ModuleType | None = None  # set once the import is complete (sys.modules has it from its start)


def _import() -> ModuleType:
    global _module
    with _lock:
        if _module is None:
            with _skip_liboqs_probe():
                _module = importlib.import_module("asyncssh")
        return _module


async def load() -> None:
    """asyncssh imported, in a thread so that the event loop (and a build beside it) go on meanwhile."""
    if _module is None:
        await asyncio.to_thread(_import)


class _OnFirstUse:
    def __getattr__(self, name: str) -> Any:
        return getattr(_import(), name)


if TYPE_CHECKING:
    import asyncssh as asyncssh
else:
    asyncssh = _OnFirstUse()
