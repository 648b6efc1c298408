"""Failed requests during consecutive deploys, or agent restarts, under keep-alive load (target: zero).

A fleet of real sshd servers; after a warm-up deploy, keep-alive GET loops (tests/agentkit's `Load`,
bounded in requests and time) run through every server's router while `--deploys` deploys of new
versions of the ~5 MB bench app follow one another; or, with `--restarts N`, N runs of
`tako servers setup --restart` on every server (the agents restart in place; the instances' pids
must not change). Counts every request and every failure.

    .venv/bin/python bench/zero_downtime.py [--servers 3] [--deploys 10] [--restarts 0] [--connections 2]
        [--no-write]

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

from tako_core.transport.agent_client import AgentClient
from tests.agentkit.kit import Load
from tests.fleet import FleetServer

MAX_SECONDS = 600.0
MAX_REQUESTS = 5_000_000


async def instance_pids(servers: list[FleetServer]) -> list[int | None]:
    pids: list[int | None] = []
    for s in servers:
        client = await AgentClient.open_unix(s.root / "run" / "tako.sock")
        pids += [i.pid for app in await client.status() for i in app.instances]
        await client.close()
    return pids


async def restart(servers: list[FleetServer], env: dict[str, str]) -> float:
    """`tako servers setup --restart` on every server; its wall time."""
    began = time.monotonic()
    names = [s.name for s in servers]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tako_tui.cli",
        "servers",
        "setup",
        "--restart",
        *names,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0:
        raise RuntimeError(f"tako servers setup --restart exited with {proc.returncode}:\n{err.decode()}")
    return time.monotonic() - began


async def measure(
    count: int, deploys: int, connections: int, instances: int, restarts: int = 0
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
        pids = await instance_pids(fleet.servers)
        try:
            for n in range(restarts):
                walls.append(await restart(fleet.servers, fleet.env))
                print(f"  restart {n + 1}/{restarts}: {walls[-1]:.2f} s", file=sys.stderr)
            if restarts and await instance_pids(fleet.servers) != pids:
                raise RuntimeError("an instance's pid changed across the agents' restarts")
            for n in range(deploys if not restarts else 0):
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
    parser.add_argument("--restarts", type=int, default=0, help="restart every agent N times instead")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    loads, walls, elapsed, served = await measure(
        args.servers, args.deploys, args.connections, args.instances, args.restarts
    )
    if args.restarts:
        report_restarts(args.servers, args.restarts, args.connections, loads, walls, elapsed, args.no_write)
        return
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


def report_restarts(
    servers: int,
    restarts: int,
    connections: int,
    loads: list[Load],
    walls: list[float],
    elapsed: float,
    no_write: bool,
) -> None:
    requests = sum(len(load.samples) for load in loads)
    failed = sum(len(load.failed) for load in loads)
    slowest = max(s.answered - s.sent for load in loads for s in load.samples)  # waits in the backlog
    errors = collections.Counter(e for load in loads for e in load.errors)
    command = (
        f".venv/bin/python bench/zero_downtime.py --servers {servers} --restarts {restarts} "
        f"--connections {connections}"
    )
    text = (
        f"{machine()}. Reproduce: `{command}`. Every instance's pid is the same after the restarts "
        "(checked by the script). Each agent restarts in place: it stops accepting, ends its connections "
        "after their next response (`Connection: close`), execs the new build with the listening socket "
        "inherited and re-adopts its instances; the slowest request is one that waited in the socket's "
        "backlog meanwhile.\n\n"
        + table(
            [
                "servers",
                "restarts of every agent",
                "keep-alive connections",
                "requests",
                "req/s",
                "failed",
                "slowest request",
            ],
            [
                [
                    str(servers),
                    str(restarts),
                    str(servers * connections),
                    f"{requests:,}",
                    f"{requests / elapsed:,.0f}",
                    f"**{failed}**",
                    f"{slowest * 1000:.0f} ms",
                ]
            ],
        )
        + f"\n\n`tako servers setup --restart` wall times: {', '.join(f'{w:.2f}' for w in walls)} s."
        + ("" if not errors else "\n\nErrors: " + "; ".join(f"{n}x {e}" for e, n in errors.most_common(5)))
    )
    print(text)
    if not no_write:
        write_section("Agent restarts", text)


if __name__ == "__main__":
    asyncio.run(main())
