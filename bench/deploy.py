"""Deploy wall time against an OpenSSH baseline, plus gate latency, swap overhead and memory.

For each fleet size (real sshd on 127.0.0.x): one warm-up deploy (installs and starts the agents,
leaves an old instance running), then `--rounds` rounds in which `tako deploy --json` of a new version
of the ~5 MB bench app and the by-hand OpenSSH baseline (scp + extract everywhere, release command on
the leader, restart one process per server and wait until it answers) take turns. From the same
tako deploys: the gate latency (leader's release command exit -> first follower leaving "Waiting for
release command"), the swap (new instance ready -> the router's first response from it, seen by a
probe every 2 ms through the router), the rollout minus the app's boot, client and agent RSS.

    .venv/bin/python bench/deploy.py [--servers 3 10] [--rounds 5] [--no-write]

Everything it starts (sshd, agents, instances) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from deploylib import (
    Baseline,
    Probe,
    TakoRun,
    agent_pids,
    boot_records,
    gate_latency,
    machine,
    make_app,
    median,
    run_tako,
    set_version,
    spread,
    status_kb,
    table,
    tako_data,
    tako_phases,
    write_section,
)
from fleetlib import BenchFleet, bench_fleet

PROBED = 3  # servers probed through their router (probing all of 10 would load the 2 cores)


@dataclass
class SizeResult:
    count: int
    tako: list[dict[str, float]] = field(default_factory=list)
    baseline: list[dict[str, float]] = field(default_factory=list)
    gate: list[float] = field(default_factory=list)
    swap: list[float] = field(default_factory=list)
    rollout_overhead: list[float] = field(default_factory=list)
    boot: list[float] = field(default_factory=list)
    unseen: int = 0  # new instances the probe never reached
    client_kb: list[int] = field(default_factory=list)
    agent_peak_kb: list[int] = field(default_factory=list)  # sampled VmRSS during the measured deploys
    agent_hwm_kb: list[int] = field(default_factory=list)  # per agent, at the end


class RssSampler:
    """Polls the agents' VmRSS every 50 ms while a deploy runs (bounded by the deploy's own timeout)."""

    def __init__(self, fleet: BenchFleet) -> None:
        self.fleet = fleet
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        for _ in range(20 * 600):
            self.peak = max([self.peak, *(status_kb(p, "VmRSS") for p in agent_pids(self.fleet.servers))])
            await asyncio.sleep(0.05)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._task = asyncio.ensure_future(self._poll())
        try:
            yield
        finally:
            self._task.cancel()


async def measured_tako(fleet: BenchFleet, version: str, result: SizeResult, sampler: RssSampler) -> None:
    app = fleet.workdir / "app"
    set_version(app, version)
    servers = fleet.servers
    probes = [Probe(s.http_port) for s in servers[:PROBED]]
    tasks = [asyncio.ensure_future(p.run()) for p in probes]
    try:
        with sampler.running():
            run: TakoRun = await run_tako(app / "tako.toml", fleet.env, fleet.workdir / "scratch")
    finally:
        for p in probes:
            p.stop()
        await asyncio.gather(*tasks)
    names = [s.name for s in servers]
    result.tako.append(tako_phases(run, names))
    gate = gate_latency(run, names[0], names[1:])
    if gate is not None:
        result.gate.append(gate)
    for server, probe in zip(servers, probes, strict=False):
        records = boot_records(tako_data(server), version)
        if not records:
            raise RuntimeError(f"{server.name}: no instance of {version} recorded its boot")
        for port, (t0, ready) in records.items():
            result.boot.append(ready - t0)
            seen = probe.first_seen.get(f"{version} {port}")
            if seen is None:
                result.unseen += 1  # routed too briefly for a probe every 2 ms to hit it
            else:
                result.swap.append(seen - ready)
    for server in servers:
        boots = sum(ready - t0 for t0, ready in boot_records(tako_data(server), version).values())
        rollout = float(run.phase_done(server.name, "Rollout")["seconds"])  # type: ignore[arg-type]
        result.rollout_overhead.append(rollout - boots)
    result.client_kb.append(run.client_peak_kb)
    result.agent_peak_kb.append(sampler.peak)


async def measure(count: int, rounds: int, instances: int, tako_src: str | None) -> SizeResult:
    result = SizeResult(count)
    with bench_fleet(count) as fleet:
        if tako_src:
            fleet.env["PYTHONPATH"] = tako_src
        app = make_app(fleet.workdir / "app", fleet.servers, instances=instances).parent
        baseline = Baseline(fleet.servers, app, fleet.workdir / "baseline-cache")
        sampler = RssSampler(fleet)
        set_version(app, "warm-t")
        await run_tako(app / "tako.toml", fleet.env, fleet.workdir / "scratch")
        set_version(app, "warm-b")
        await baseline.run("warm-b")
        for r in range(rounds):
            steps = ["tako", "baseline"] if r % 2 == 0 else ["baseline", "tako"]
            for step in steps:
                if step == "tako":
                    await measured_tako(fleet, f"t{r}", result, sampler)
                else:
                    version = f"b{r}"
                    set_version(app, version)
                    result.baseline.append(await baseline.run(version))
            print(f"  {count} servers, round {r + 1}/{rounds} done", file=sys.stderr)
        result.agent_hwm_kb = [status_kb(pid, "VmHWM") for pid in agent_pids(fleet.servers)]
    return result


def _col(runs: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in runs]


def report(results: list[SizeResult], rounds: int) -> str:
    parts = []
    for res in results:
        t_total = median(_col(res.tako, "total"))
        b_total = median(_col(res.baseline, "total"))
        rows = [[k, spread(_col(res.tako, k))] for k in res.tako[0]]
        b_rows = [[k, spread(_col(res.baseline, k))] for k in res.baseline[0]]
        in_pipeline = [
            r["total"] - r["process start"] - r["close (sessions, loop)"] - r["interpreter exit"]
            for r in res.tako
        ]
        parts.append(
            f"### {res.count} servers (sshd), {rounds} rounds: median (min-max) seconds\n\n"
            + table(["tako phase (critical path)", "seconds"], rows)
            + "\n\n"
            + table(["baseline step (OpenSSH by hand)", "seconds"], b_rows)
            + "\n\n"
            + f"**tako / baseline: {t_total / b_total:.2f}x** (median {t_total:.2f} s vs {b_total:.2f} s); "
            + f"without the client's process start and exit: {median(in_pipeline) / b_total:.2f}x "
            + f"({median(in_pipeline):.2f} s). Ratio per round: "
            + ", ".join(
                f"{t['total'] / b['total']:.2f}x" for t, b in zip(res.tako, res.baseline, strict=True)
            )
            + "."
        )
    rows = []
    for res in results:
        rows.append(
            [
                str(res.count),
                spread(res.gate, 1000, 1),
                spread(res.swap, 1000, 1) + (f", {res.unseen} never hit" if res.unseen else ""),
                spread(res.rollout_overhead, 1000, 0),
                spread(res.boot, 1000, 0),
            ]
        )
    parts.append(
        "### Gate and swap, ms: median (min-max)\n\n"
        + table(
            [
                "servers",
                "gate latency (target < 50)",
                f"swap per instance: ready -> first routed response (first {PROBED} servers; target < 100)",
                "rollout minus the instances' boot, per server (target < 100)",
                "app boot (T0 -> listening)",
            ],
            rows,
        )
    )
    rows = []
    for res in results:
        rows.append(
            [
                str(res.count),
                spread([k / 1024 for k in res.client_kb], digits=1),
                spread([k / 1024 for k in res.agent_peak_kb], digits=1),
                spread([k / 1024 for k in res.agent_hwm_kb], digits=1),
            ]
        )
    parts.append(
        "### Memory, MB: median (min-max)\n\n"
        + table(
            [
                "servers",
                "client peak RSS (VmHWM) per deploy",
                "largest agent RSS sampled every 50 ms during a deploy",
                "agent VmHWM at the end, per agent",
            ],
            rows,
        )
    )
    return "\n\n".join(parts)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=1, help="instances per server")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument(
        "--tako-src",
        help="run the tako client (and so the agent it installs) from this source tree, e.g. a copy "
        "with a proposed patch; implies --no-write",
    )
    args = parser.parse_args()
    results = [await measure(count, args.rounds, args.instances, args.tako_src) for count in args.servers]
    body = report(results, args.rounds)
    sizes = " ".join(map(str, args.servers))
    command = f".venv/bin/python bench/deploy.py --servers {sizes} --rounds {args.rounds}"
    title = "Deploy"
    if args.instances != 1:
        command += f" --instances {args.instances}"
        title += f" ({args.instances} instances per server)"
    header = f"{machine()}. Reproduce: `{command}`.\n\n"
    print(header + body)
    if not args.no_write and not args.tako_src:
        write_section(title, header + body)


if __name__ == "__main__":
    asyncio.run(main())
