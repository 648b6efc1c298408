"""Failed requests during consecutive deploys under keep-alive load (target: zero).

A fleet of real sshd servers; after a warm-up deploy, keep-alive GET loops (tests/agentkit's `Load`,
bounded in requests and time) run through every server's router while `--deploys` deploys of new
versions of the ~5 MB bench app follow one another. Counts every request and every failure.

    .venv/bin/python bench/zero_downtime.py [--servers 3] [--deploys 10] [--connections 2] [--no-write]

Everything it starts (sshd, agents, instances) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time

from deploylib import ROUTE, machine, make_app, run_tako, set_version, table, write_section
from fleetlib import bench_fleet

from tests.agentkit.kit import Load

MAX_SECONDS = 600.0
MAX_REQUESTS = 5_000_000


async def measure(
    count: int, deploys: int, connections: int, instances: int
) -> tuple[list[Load], list[float], float, set[str]]:
    with bench_fleet(count) as fleet:
        app = make_app(fleet.workdir / "app", fleet.servers, instances=instances).parent
        cfg = app / "tako.toml"
        set_version(app, "warm")
        await run_tako(cfg, fleet.env, fleet.workdir / "scratch")
        loads = [
            Load(
                s.http_port,
                ROUTE,
                connections=connections,
                max_requests=MAX_REQUESTS,
                max_seconds=MAX_SECONDS,
            )
            for s in fleet.servers
        ]
        for load in loads:
            load.start()
        await asyncio.sleep(0.5)  # every connection open and warm before the first deploy
        walls = []
        began = time.monotonic()
        try:
            for n in range(deploys):
                set_version(app, f"v{n}")
                run = await run_tako(cfg, fleet.env, fleet.workdir / "scratch")
                walls.append(run.wall)
                print(f"  deploy {n + 1}/{deploys}: {run.wall:.2f} s", file=sys.stderr)
            await asyncio.sleep(0.5)
        finally:
            for load in loads:
                await load.stop()
        elapsed = time.monotonic() - began
        served = {s.body.split()[0] for load in loads for s in load.samples if s.body}
    return loads, walls, elapsed, served


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--deploys", type=int, default=10)
    parser.add_argument("--connections", type=int, default=2, help="keep-alive connections per server")
    parser.add_argument("--instances", type=int, default=1, help="instances per server")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    loads, walls, elapsed, served = await measure(
        args.servers, args.deploys, args.connections, args.instances
    )
    requests = sum(len(load.samples) for load in loads)
    failed = sum(len(load.failed) for load in loads)
    errors = collections.Counter(e for load in loads for e in load.errors)
    rows = [
        [
            str(args.servers),
            str(args.deploys),
            str(args.servers * args.connections),
            f"{requests:,}",
            f"{requests / elapsed:,.0f}",
            f"**{failed}**",
            f"{len(served)}",
        ]
    ]
    command = (
        f".venv/bin/python bench/zero_downtime.py --servers {args.servers} --deploys {args.deploys} "
        f"--connections {args.connections}"
        + (f" --instances {args.instances}" if args.instances != 1 else "")
    )
    text = (
        f"{machine()}. Reproduce: `{command}`.\n\n"
        + table(
            [
                "servers",
                "consecutive deploys",
                "keep-alive connections",
                "requests",
                "req/s",
                "failed",
                "versions served",
            ],
            rows,
        )
        + f"\n\nDeploy wall times: {', '.join(f'{w:.2f}' for w in walls)} s."
        + ("" if not errors else "\n\nErrors: " + "; ".join(f"{n}x {e}" for e, n in errors.most_common(5)))
    )
    print(text)
    if not args.no_write:
        suffix = f" ({args.instances} instances per server)" if args.instances != 1 else ""
        write_section("Zero downtime" + suffix, text)


if __name__ == "__main__":
    asyncio.run(main())
