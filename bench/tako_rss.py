"""Run the `tako` command in this process, then record in $BENCH_RSS_FILE its peak RSS (VmHWM, kB),
the time.time() at which the command returned (its exit, as `tako`'s own, comes after) and the CPU
seconds (user + system) it used.

BENCH_RSS_FILE=/tmp/rss .venv/bin/python bench/tako_rss.py deploy --json --yes -c app/tako.toml
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    from tako_tui.cli import exit_now, invoke  # timed as part of the process's start, as in `tako`

    code = invoke(sys.argv[1:])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    Path(os.environ["BENCH_RSS_FILE"]).write_text(f"{_peak_kb()} {time.time():.6f} {cpu:.3f}\n")
    exit_now(code)
