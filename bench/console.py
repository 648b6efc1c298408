"""The console under a flood of release output: 100,000 lines into the log pane.

A scripted release command prints 100,000 lines (`chunk` lines per read from the SSH channel, as fast as
the loop allows) into the deploy console (headless Textual, the real bridge, screen and log pane).
Measured: the time from the first line emitted to the last one in the pane, and the frame time
while streaming, i.e. the longest gap between ticks of a 16 ms interval timer on the app's loop.
Prints a table and writes it as the "Console" section of bench/BENCHMARKS.md.

    .venv/bin/python bench/console.py [--runs 5] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tui_scenarios import StreamResult, stream_lines  # noqa: E402

BENCHMARKS = ROOT / "bench" / "BENCHMARKS.md"
LINES = 100_000
CASES = ((1000, (120, 40)), (100, (120, 40)), (1000, (80, 24)))


def measure(runs: int) -> list[tuple[int, tuple[int, int], list[StreamResult]]]:
    table = []
    for chunk, size in CASES:
        results = [asyncio.run(stream_lines(total=LINES, chunk=chunk, size=size)) for _ in range(runs)]
        assert all(r.lines == LINES for r in results)
        table.append((chunk, size, results))
    return table


def render(table: list[tuple[int, tuple[int, int], list[StreamResult]]], runs: int, load: float) -> str:
    rows = [
        "| lines per read | terminal | all lines in the pane (median, worst) "
        "| worst frame gap (median, worst) | its CPU time (median, worst) |",
        "|---|---|---|---|---|",
    ]
    for chunk, (width, height), results in table:
        secs = [r.seconds for r in results]
        gaps = [r.max_gap * 1000 for r in results]
        cpu = [r.max_gap_cpu * 1000 for r in results]
        rows.append(
            f"| {chunk} | {width}x{height} | {statistics.median(secs):.2f} s, {max(secs):.2f} s "
            f"| {statistics.median(gaps):.0f} ms, {max(gaps):.0f} ms "
            f"| {statistics.median(cpu):.0f} ms, {max(cpu):.0f} ms |"
        )
    cpus = os.cpu_count()
    return (
        "## Console\n\n"
        f"`bench/console.py`, {dt.date.today().isoformat()}, {runs} runs per row, Python "
        f"{platform.python_version()}, {cpus} cores, load average {load:.1f} when it started (other work "
        f"shares these cores: read the worst columns as upper bounds). {LINES:,} release-output lines "
        "streamed through the bridge (batches every 50 ms) into the deploy screen's log pane, headless. "
        "The frame gap is the longest pause between ticks of a 16 ms timer on the app's loop while the "
        "lines streamed (it includes producing the events, as the SSH reader would, on the same loop); "
        "its CPU time is the process time spent in that gap, which other work on the cores does not "
        "inflate.\n\n"
        + "\n".join(rows)
        + "\n\nOne `Log.write_lines` per batch; one message per batch, not per line "
        "(one `write_line` per line would take ~28 s for 100k, REFERENCE.md).\n\n"
    )


def write_section(section: str) -> None:
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    # Replace our own section (up to the next "## " heading) and leave everyone else's alone.
    pattern = re.compile(r"^## Console\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    )
    tmp = BENCHMARKS.with_suffix(".md.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, BENCHMARKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    section = render(measure(args.runs), args.runs, load)
    print(section, end="")
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
