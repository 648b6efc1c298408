"""Deploy wall time as the fleet grows: 1, 3, 10, 30 servers, the same ~5 MB bench app.

Real sshd hosts by default; `--inprocess` adds runs on asyncssh in-process hosts (LocalSSHHost on a
thread of this process) for the sizes given. Per size: a warm-up deploy (agents installed and an old
instance running), then `--rounds` measured `tako deploy --json` runs of new versions.

    .venv/bin/python bench/scaling.py [--servers 1 3 10 30] [--inprocess 30] [--rounds 3] [--no-write]

Everything it starts (sshd, agents, instances) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys

from deploylib import (
    agent_pids,
    cpu_seconds,
    machine,
    make_app,
    median,
    run_tako,
    set_version,
    spread,
    table,
    tako_phases,
    write_section,
)
from fleetlib import bench_fleet

from tests.fleet import Kind

SHOWN = ("connect + agent + lease", "upload + install", "release (gate)", "rollout", "finalize")
CPU = ("cpu: client", "cpu: agents", "cpu: ssh servers")


async def measure(count: int, kind: Kind, rounds: int) -> list[dict[str, float]]:
    runs = []
    with bench_fleet(count, kind) as fleet:
        app = make_app(fleet.workdir / "app", fleet.servers).parent
        cfg = app / "tako.toml"
        set_version(app, "warm")
        await run_tako(cfg, fleet.env, fleet.workdir / "scratch")
        for r in range(rounds):
            set_version(app, f"v{r}")
            agents, sshd = agent_pids(fleet.servers), fleet.sshd_pids()
            before = (cpu_seconds(agents), cpu_seconds(sshd), _own_cpu())
            run = await run_tako(cfg, fleet.env, fleet.workdir / "scratch")
            phases = tako_phases(run, [s.name for s in fleet.servers])
            phases["cpu: client"] = run.cpu
            phases["cpu: agents"] = cpu_seconds(agents) - before[0]
            # sshd: the listeners reap their per-connection processes; in-process hosts run here.
            phases["cpu: ssh servers"] = cpu_seconds(sshd) - before[1]
            if kind == "inprocess":
                phases["cpu: ssh servers"] = _own_cpu() - before[2]
            runs.append(phases)
            print(f"  {count} {kind}: round {r + 1}/{rounds}: {run.wall:.2f} s", file=sys.stderr)
    return runs


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report(results: list[tuple[int, Kind, list[dict[str, float]]]], rounds: int) -> str:
    one = next((median([r["total"] for r in runs]) for n, k, runs in results if n == 1 and k == "sshd"), None)
    rows = []
    for count, kind, runs in results:
        total = [r["total"] for r in runs]
        ratio = f"{median(total) / one:.2f}x" if one else "n/a"
        cpu = [r["cpu: client"] + r["cpu: agents"] + r["cpu: ssh servers"] for r in runs]
        rows.append(
            [
                str(count),
                kind,
                spread(total),
                ratio,
                *(f"{median([r[k] for r in runs]):.2f}" for k in SHOWN),
                *(f"{median([r[k] for r in runs]):.2f}" for k in CPU),
                f"{median(cpu) / (os.cpu_count() or 1):.2f}",
                f"{median(total) - median(cpu) / (os.cpu_count() or 1):.2f}",
            ]
        )
    return (
        f"{rounds} rounds per row; total = `tako deploy --json` process wall time, median (min-max) s; "
        "the phase columns are medians of the critical-path segments (as in Deploy), s.\n\n"
        + "CPU columns: CPU seconds used during one deploy by the client, by all agents (with the "
        "instances and commands they reaped), and by the SSH servers; the floor is their sum divided "
        f"by the {os.cpu_count()} cores: no scheduling could finish the deploy faster on this machine.\n\n"
        + table(
            [
                "servers",
                "SSH hosts",
                "total",
                "vs 1 server",
                *SHOWN,
                *CPU,
                "CPU floor s",
                "total minus floor",
            ],
            rows,
        )
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument(
        "--inprocess", type=int, nargs="*", default=[30], help="sizes to run on in-process hosts too"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    plan: list[tuple[int, Kind]] = [(n, "sshd") for n in args.servers]
    plan += [(n, "inprocess") for n in args.inprocess]
    results = [(n, kind, await measure(n, kind, args.rounds)) for n, kind in plan]
    command = (
        f".venv/bin/python bench/scaling.py --servers {' '.join(map(str, args.servers))} "
        f"--inprocess {' '.join(map(str, args.inprocess))} --rounds {args.rounds}"
    )
    text = f"{machine()}. Reproduce: `{command}`.\n\n" + report(results, args.rounds)
    print(text)
    if not args.no_write:
        write_section("Scaling", text)


if __name__ == "__main__":
    asyncio.run(main())
