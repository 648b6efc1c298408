"""Deploy wall time over slow links, and the round trips each phase waits for: tako (first deploy and
redeploy) side by side with an OpenSSH script, a delay proxy (tests/delayproxy.py, its own process)
in front of every sshd of the bench fleet.

For each RTT (`--rtt`, ms; 0 also goes through a proxy, without delay, so the proxy's own cost cancels
out of the differences), `--rounds` rounds in which these take turns:
  - tako first deploy: `tako deploy --json` to the same hosts with new, empty roots (it installs and
    starts the agent there);
  - tako redeploy: a new version (one file changed) where the agent runs and the last version serves;
  - the OpenSSH script (deploylib.SharedBaseline): one ControlMaster connection per server, opened in
    parallel; scp + tar everywhere, the release command on the leader, restart + wait until it answers;
  - the SSH handshake alone, the floor of any SSH tool: asyncssh's connect as tako makes it
    (`Connection.open`), and `ssh host true` (a new OpenSSH process: handshake plus one command).
Round trips on the critical path of a phase = (median at RTT X - median at RTT 0) / X.

    .venv/bin/python bench/latency.py [--rtt 0 100 300] [--servers 3] [--rounds 3] [--mbit 10]
                                      [--size 5000000] [--no-write]

Everything it starts (proxies, sshd, agents, instances, ssh masters) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploylib import (
    SharedBaseline,
    TakoRun,
    machine,
    make_app,
    median,
    run_command,
    run_tako,
    set_version,
    spread,
    ssh_argv,
    table,
    tako_phases,
    write_section,
)
from fleetlib import BenchFleet, bench_fleet

from tako_core.config import add_server
from tako_core.transport import Connection
from tests.delayproxy import DelayProxy, Link, via_proxy
from tests.fleet import FleetServer

FIRST, REDEPLOY, SCRIPT, HANDSHAKE = "tako first deploy", "tako redeploy", "OpenSSH script", "handshake"
ASYNCSSH, SSH_TRUE = "asyncssh connect (tako's Connection.open)", "`ssh host true` (new OpenSSH process)"
DIRECT = "asyncssh connect, straight to sshd (no proxy)"
HANDSHAKES_PER_ROUND = 3
TARGET_RTT = 100  # ms: the targets are set at this RTT
DEFAULT_SIZE = 5_000_000  # bytes of source: deploylib's bench app

Timings = dict[str, float]  # phase -> seconds, for one run


@dataclass
class Setting:
    """One RTT: the fleet as reached through its proxy, a TAKO_HOME listing it, the script over it."""

    rtt: int  # ms
    proxy: DelayProxy
    servers: list[FleetServer]
    env: dict[str, str]
    script: SharedBaseline

    @property
    def seconds(self) -> float:
        return self.rtt / 1000


@dataclass
class Results:
    runs: dict[str, dict[int, list[Timings]]] = field(default_factory=dict)  # kind -> rtt -> runs

    def add(self, kind: str, rtt: int, timings: Timings) -> None:
        self.runs.setdefault(kind, {}).setdefault(rtt, []).append(timings)

    def values(self, kind: str, rtt: int, key: str) -> list[float]:
        return [t[key] for t in self.runs.get(kind, {}).get(rtt, []) if key in t]

    def median(self, kind: str, rtt: int, key: str = "total") -> float:
        return median(self.values(kind, rtt, key))

    def round_trips(self, kind: str, rtt: int, key: str = "total") -> float:
        """Round trips `key` waited for on the critical path at `rtt`, against RTT 0."""
        return (self.median(kind, rtt, key) - self.median(kind, 0, key)) / (rtt / 1000)

    def keys(self, kind: str) -> list[str]:
        return list(next(iter(self.runs[kind].values()))[0])


class LatencyBench:
    def __init__(self, fleet: BenchFleet, cfg: Path, settings: list[Setting]) -> None:
        self.fleet = fleet
        self.cfg = cfg
        self.settings = settings
        self.names = [s.name for s in fleet.servers]
        self.results = Results()

    def _limit(self, setting: Setting) -> float:
        """A bound on one deploy: ~10x today's worst at 300 ms RTT."""
        return 60 + 300 * setting.seconds

    async def first_deploy(self, setting: Setting, version: str) -> Timings:
        set_version(self.cfg.parent, version)
        with self.fleet.fresh_roots() as fresh:
            base = self.fleet.base / f"first-{setting.rtt}"
            home = base / "home"
            home.mkdir(parents=True, exist_ok=True)
            for server in via_proxy(fresh, setting.proxy, base / "known_hosts"):
                add_server(server.server, home=home, replace=True)
            env = dict(setting.env, TAKO_HOME=str(home))
            run = await run_tako(self.cfg, env, self.fleet.workdir / "scratch", self._limit(setting))
        return _phases(run, self.names)

    async def redeploy(self, setting: Setting, version: str) -> Timings:
        set_version(self.cfg.parent, version)
        run = await run_tako(self.cfg, setting.env, self.fleet.workdir / "scratch", self._limit(setting))
        return _phases(run, self.names)

    async def script(self, setting: Setting, version: str) -> Timings:
        set_version(self.cfg.parent, version)
        return await setting.script.run(version)

    async def handshakes(self, setting: Setting) -> Timings:
        server = setting.servers[0]
        timings = {ASYNCSSH: await _asyncssh_connect(server)}
        began = time.time()
        await run_command(ssh_argv(server, "true"))
        timings[SSH_TRUE] = time.time() - began
        if setting.rtt == 0:
            timings[DIRECT] = await _asyncssh_connect(self.fleet.servers[0])
        return timings

    async def round(self, number: int) -> None:
        """Every kind at every RTT once; the order of RTTs and of kinds turns with each round."""
        jobs: list[tuple[str, str, Callable[[Setting, str], Awaitable[Timings]]]] = [
            (FIRST, "f", self.first_deploy),
            (REDEPLOY, "t", self.redeploy),
            (SCRIPT, "b", self.script),
        ]
        jobs = jobs[number % 3 :] + jobs[: number % 3]
        settings = self.settings if number % 2 == 0 else self.settings[::-1]
        for setting in settings:
            for kind, tag, job in jobs:
                self.results.add(kind, setting.rtt, await job(setting, f"{tag}{setting.rtt}-{number}"))
            for _ in range(HANDSHAKES_PER_ROUND):
                self.results.add(HANDSHAKE, setting.rtt, await self.handshakes(setting))

    async def warm_up(self) -> None:
        """Install the agent in the fleet's roots, and leave a version of the app and of the script's
        app running, so that every measured redeploy and script run replaces one."""
        setting = self.settings[0]
        await self.redeploy(setting, "warm-t")
        await self.script(setting, "warm-b")


SHIP = "upload + install, from connect and build done"


def _phases(run: TakoRun, names: Sequence[str]) -> Timings:
    """tako_phases, plus the upload + install alone: a big app's build can outlast the connect, and
    the upload waits for it."""
    timings = tako_phases(run, names)
    built = float(run.phase_done(None, "Build")["at"])  # type: ignore[arg-type]
    connected = max(float(run.phase_done(s, "Connect")["at"]) for s in names)  # type: ignore[arg-type]
    installed = max(float(run.phase_done(s, "Install")["at"]) for s in names)  # type: ignore[arg-type]
    timings[SHIP] = installed - max(connected, built)
    return timings


async def _asyncssh_connect(server: FleetServer) -> float:
    began = time.time()
    conn = await Connection.open(server.server, timeout=60)
    connected = time.time()
    await conn.close()
    return connected - began


# --- the report ---------------------------------------------------------------------------------------


def _without_process(results: Results, kind: str, rtt: int) -> float:
    runs = results.runs[kind][rtt]
    return median([t["total"] - t["process start"] - t["interpreter exit"] for t in runs])


def _trips(results: Results, kind: str, key: str, rtts: Sequence[int]) -> list[str]:
    return [f"{results.round_trips(kind, x, key):.1f}" for x in rtts]


def report(results: Results, rtts: Sequence[int], servers: int, rounds: int, *, targets: bool) -> str:
    slow = [x for x in rtts if x > 0]
    kinds = (FIRST, REDEPLOY, SCRIPT)
    rows = [[kind, *(spread(results.values(kind, x, "total")) for x in rtts)] for kind in kinds]
    for kind in (FIRST, REDEPLOY):
        rows.append(
            [
                f"**{kind} / script**",
                *(f"{results.median(kind, x) / results.median(SCRIPT, x):.2f}x" for x in rtts),
            ]
        )
    for kind in (FIRST, REDEPLOY):  # what the client's own start and exit (issue #14) weigh
        rows.append(
            [
                f"{kind} / script, without the client's process start and exit",
                *(f"{_without_process(results, kind, x) / results.median(SCRIPT, x):.2f}x" for x in rtts),
            ]
        )
    parts = [
        f"### Wall time, {servers} servers, {rounds} rounds: median (min-max) s\n\n"
        + table(["", *(f"RTT {x} ms" for x in rtts)], rows)
    ]

    header = ["tako phase (critical path)"]
    header += [f"{k} @{x}" for k in ("first deploy", "redeploy") for x in slow]
    rows = [[key, *_trips(results, FIRST, key, slow), *_trips(results, REDEPLOY, key, slow)]
            for key in results.keys(REDEPLOY)]  # fmt: skip
    handshake = [f"{results.round_trips(HANDSHAKE, x, ASYNCSSH):.1f}" for x in slow]
    rows.append(["SSH handshake alone (asyncssh connect, inside `connect`)", *handshake, *handshake])
    rows.append(
        [
            "**total beyond the SSH handshake**",
            *(
                f"**{results.round_trips(kind, x) - results.round_trips(HANDSHAKE, x, ASYNCSSH):.1f}**"
                for kind in (FIRST, REDEPLOY)
                for x in slow
            ),
        ]
    )
    parts.append(
        "### Round trips on the critical path: (median at RTT X - median at RTT 0) / X\n\n"
        "Process start, build and interpreter exit are local: their figures are the noise of the method.\n\n"
        + table(header, rows)
    )

    rows = [[key, *_trips(results, SCRIPT, key, slow)] for key in results.keys(SCRIPT)]
    beyond = [
        results.round_trips(SCRIPT, x) - results.round_trips(SCRIPT, x, "connect (masters)") for x in slow
    ]
    rows.append(["**total beyond the SSH handshake (connect)**", *(f"**{b:.1f}**" for b in beyond)])
    parts.append(
        "### The OpenSSH script, round trips per step\n\n"
        "scp and extract are the slowest server's; the ship step is both, all servers in parallel.\n\n"
        + table(["script step", *(f"@{x}" for x in slow)], rows)
    )

    rows = []
    for key in (ASYNCSSH, SSH_TRUE, DIRECT):
        measured = [x for x in rtts if results.values(HANDSHAKE, x, key)]
        walls = [spread(results.values(HANDSHAKE, x, key), 1000, 0) if x in measured else "" for x in rtts]
        trips = [f"{results.round_trips(HANDSHAKE, x, key):.1f}" if x in measured else "" for x in slow]
        rows.append([key, *walls, *trips])
    parts.append(
        f"### The SSH handshake alone, {HANDSHAKES_PER_ROUND} per round and RTT: ms, median (min-max); "
        "round trips\n\n"
        + table(["", *(f"RTT {x} ms" for x in rtts), *(f"round trips @{x}" for x in slow)], rows)
    )
    if targets and TARGET_RTT in rtts:
        parts.append(_targets(results))
    if not targets:
        parts.append(_delta(results, rtts))
    return "\n\n".join(parts)


def _delta(results: Results, rtts: Sequence[int]) -> str:
    """Upload + install of the whole artifact (a first deploy) against only what changed (a redeploy
    of one changed file): the issue's target for a big app over a slow link."""
    key = SHIP
    rows = []
    for x in rtts:
        whole, delta = results.median(FIRST, x, key), results.median(REDEPLOY, x, key)
        rows.append(
            [f"RTT {x} ms", f"{whole:.2f}", f"{delta:.2f}", f"{delta / whole:.3f}", _met(delta <= whole / 10)]
        )
    header = ["", "whole artifact (first deploy), s", "only what changed (redeploy), s", "ratio", "<= 0.10"]
    return "### Upload + install: the whole artifact against only what changed\n\n" + table(header, rows)


def _targets(results: Results) -> str:
    """The issue's targets at 100 ms RTT, against this run."""
    x = TARGET_RTT
    redeploy = results.median(REDEPLOY, x) / results.median(SCRIPT, x)
    first = results.median(FIRST, x) / results.median(SCRIPT, x)
    beyond = results.round_trips(REDEPLOY, x) - results.round_trips(HANDSHAKE, x, ASYNCSSH)
    rows = [
        ["tako redeploy / script", "<= 0.60x", f"{redeploy:.2f}x", _met(redeploy <= 0.6)],
        ["tako redeploy: round trips beyond the SSH handshake", "<= 15", f"{beyond:.1f}", _met(beyond <= 15)],
        ["tako first deploy / script", "<= 1.00x", f"{first:.2f}x", _met(first <= 1.0)],
    ]
    if results.runs[REDEPLOY].get(300):
        far = results.median(REDEPLOY, 300) / results.median(SCRIPT, 300)
        rows.append(["tako redeploy / script at RTT 300 ms", "<= 0.60x", f"{far:.2f}x", _met(far <= 0.6)])
    near = results.median(REDEPLOY, 0) / results.median(SCRIPT, 0)
    bare = _without_process(results, REDEPLOY, 0) / results.median(SCRIPT, 0)
    rows.append(["tako redeploy / script at RTT 0", "<= 0.70x", f"{near:.2f}x", _met(near <= 0.7)])
    rows.append(["the same without the client's process start and exit (#14)", "", f"{bare:.2f}x", ""])
    return f"### Targets at RTT {x} ms (and 300, 0)\n\n" + table(["", "target", "now", ""], rows)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


# --- running it ---------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> Results:
    with bench_fleet(args.servers) as fleet, contextlib.ExitStack() as stack:
        cfg = make_app(fleet.workdir / "app", fleet.servers, size=args.size)
        settings = []
        for rtt in args.rtt:
            link = Link.of(rtt, args.mbit)
            proxy = stack.enter_context(DelayProxy([(s.address, s.port) for s in fleet.servers], link))
            base = fleet.base / f"rtt-{rtt}"
            home = base / "home"
            home.mkdir(parents=True)
            servers = via_proxy(fleet.servers, proxy, base / "known_hosts")
            for server in servers:
                add_server(server.server, home=home)
            # Short: the masters' socket paths must fit in 108 bytes.
            control = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tkcm")))
            script = SharedBaseline(servers, cfg.parent, fleet.workdir / "script-cache", control)
            settings.append(Setting(rtt, proxy, servers, dict(fleet.env, TAKO_HOME=str(home)), script))
        bench = LatencyBench(fleet, cfg, settings)
        await bench.warm_up()
        for number in range(args.rounds):
            began = time.monotonic()
            await bench.round(number)
            print(f"  round {number + 1}/{args.rounds}: {time.monotonic() - began:.0f} s", file=sys.stderr)
        return bench.results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rtt", type=int, nargs="+", default=[0, 100, 300], help="round-trip times, ms")
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mbit", type=float, help="pace each direction of each connection to this")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes of source in the app")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if 0 not in args.rtt:
        parser.error("--rtt must include 0: round trips are counted against it")
    args.rtt = sorted(set(args.rtt))
    load_before = os.getloadavg()[0]
    results = asyncio.run(measure(args))
    # The targets are set for the default app over an unpaced link.
    default_link = args.mbit is None and args.size == DEFAULT_SIZE
    body = report(results, args.rtt, args.servers, args.rounds, targets=default_link)
    command = f".venv/bin/python bench/latency.py --rtt {' '.join(map(str, args.rtt))}"
    command += f" --servers {args.servers} --rounds {args.rounds}"
    variant = []
    if args.size != DEFAULT_SIZE:
        command += f" --size {args.size}"
        variant.append(f"{args.size / 1e6:g} MB app")
    if args.mbit is not None:
        command += f" --mbit {args.mbit:g}"
        variant.append(f"paced to {args.mbit:g} Mbit/s")
    title = "Latency" + (f" ({', '.join(variant)})" if variant else "")
    header = f"{machine()} (it was {load_before:.2f} at the start). Reproduce: `{command}`.\n\n"
    print(header + body)
    if not args.no_write:
        write_section(title, header + body)


if __name__ == "__main__":
    main()
