"""`tako logs` over 3 real sshd servers: how long a backlog of N lines takes, and how late `-f` shows
a line after its instance wrote it.

    .venv/bin/python bench/logs.py [--rounds 3] [--follow-seconds 5]

The sample app (tests/sampleapp) prints a numbered line every 2 ms on each server. Backlog rows time the
real `tako logs -n N --json` command (a subprocess: SSH connects, the agent reads its file, the client
merges the servers); the follow row runs the core's `read_logs(follow=True)` in this process and
compares each line's arrival with the agent's stamp (one clock: the servers are this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from pathlib import Path

from deploylib import machine, median, spread, table, write_section
from fleetlib import bench_fleet

from tako_core.config import load_config, load_inventory, resolve
from tako_core.deploy.logs import LogLine, ServerLog, read_logs
from tests.deploykit import TAKO, sample_app

TICK = "0.002"
BACKLOGS = (100, 1000, 10000)
FILL = 15.0  # seconds of output before measuring: ~7,000 lines per server


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=True)
    return time.perf_counter() - began, len(done.stdout.splitlines())


async def follow_lateness(cfg: Path, seconds: float) -> list[float]:
    config = load_config(cfg)
    target = resolve(config, "production", load_inventory())
    late: list[float] = []
    backlog_done = False

    def on_line(line: LogLine) -> None:
        if backlog_done:
            late.append(time.time() - line.time)

    servers = [ServerLog(s, target) for s in target.servers]
    task = asyncio.ensure_future(read_logs(servers, lines=0, since=0.0, on_line=on_line, follow=True))
    await asyncio.sleep(1.0)  # connected and following
    backlog_done = True
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--follow-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with bench_fleet(3) as fleet:
        fleet.workdir.mkdir(parents=True, exist_ok=True)
        cfg = sample_app(fleet.workdir, fleet.servers, extra=f'[vars]\nSAMPLE_TICK = "{TICK}"\n')
        subprocess.run(
            [*TAKO, "deploy", "--yes", "--json"],
            cwd=cfg.parent,
            env=fleet.env,
            capture_output=True,
            check=True,
            timeout=300,
        )
        time.sleep(FILL)
        rows = []
        for n in BACKLOGS:
            runs = [
                timed([*TAKO, "logs", "-n", str(n), "--json"], cfg.parent, fleet.env)
                for _ in range(args.rounds)
            ]
            assert all(count == n for _, count in runs), runs
            rows.append(
                [f"`tako logs -n {n}` (3 servers, merged)", spread([t for t, _ in runs], 1000, 0) + " ms"]
            )
        os.environ["TAKO_HOME"] = str(fleet.home)
        late = sorted(asyncio.run(follow_lateness(cfg, args.follow_seconds)))
        p99 = late[int(len(late) * 0.99)] if late else float("nan")
        rate = len(late) / args.follow_seconds
        what = f"`-f`: a line's arrival after its write ({len(late)} lines, ~{rate:.0f}/s)"
        ms = [median(late) * 1000, p99 * 1000, late[-1] * 1000]
        rows.append([what, "median {:.1f} ms, p99 {:.1f} ms, worst {:.1f} ms".format(*ms)])
    body = (
        f"{machine()}. Reproduce: `.venv/bin/python bench/logs.py` (about a minute). 3 sshd servers on "
        f"loopback, the sample app printing a line every {float(TICK) * 1000:.0f} ms on each; backlog times "
        f"are median (min-max) of {args.rounds} runs of the real command, Python start-up included.\n\n"
        + table(["what", "time"], rows)
    )
    write_section("Logs", body)
    print(body)


if __name__ == "__main__":
    main()
