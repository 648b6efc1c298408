"""The demo's safety net: removes the demo's processes and directory when the demo dies however it dies.

`tako demo` starts `python -m tako_core.demo.reaper` in its own session with a pipe on its stdin and
writes the demo directory on it. The reaper waits for end of file, which comes when the demo closes the
pipe after cleaning up itself, or when the kernel closes it because the demo was killed (SIGKILL, a
closed terminal). Either way it ends what still runs under the directory and removes it. The directory
is sent on stdin, not argv, so the reaper itself never matches its own sweep.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tako_core.demo.processes import end_processes_under
from tako_core.demo.workspace import WORKSPACE_PREFIX


def main() -> None:
    directory = Path(sys.stdin.readline().strip())
    if not directory.is_absolute() or not directory.name.startswith(WORKSPACE_PREFIX):
        return  # never sweep or remove anything but a demo workspace
    sys.stdin.read()  # blocks until the demo closes the pipe or dies
    end_processes_under(directory)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
