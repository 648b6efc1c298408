"""Where a deploy's time goes: every step of `tako_core.deploy.deploy` timed, in this process.

Runs one warm-up `tako deploy` (agents installed, an old instance running), then one deploy of a new
version of the ~5 MB bench app in this process with timing wrappers around the transport, agent
client, SSH and build calls (wall time per call, per server), and optionally under cProfile.
`--first` skips the warm-up: the measured deploy installs the agents. `--rtt MS` puts a delay proxy
(tests/delayproxy.py) in front of every sshd for the measured deploy, and counts each call's round
trips (its wall time / RTT; local work counts too, so compare with `--rtt 0`).

    .venv/bin/python bench/profile_deploy.py [--servers 3] [--first] [--rtt 100] [--cprofile out.prof]

Everything it starts (sshd, agents, instances) is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import functools
import getpass
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from deploylib import make_app, run_tako, set_version, table
from fleetlib import ROOT, bench_fleet

from tako_core.build import artifact as build_module
from tako_core.config import add_server
from tako_core.deploy import DeployOptions, delta, deploy, pipeline, session
from tako_core.events import Event
from tako_core.transport import agent_client, agent_setup, connection
from tako_tui.commands.options import load_target
from tests.delayproxy import DelayProxy, Link, via_proxy

TIMES: dict[str, list[float]] = collections.defaultdict(list)

WRAPPED: list[tuple[Any, str]] = [
    (connection.Connection, "open"),
    (connection.Connection, "run"),
    (connection.Connection, "agent"),
    (connection.Connection, "close"),
    (agent_setup, "inspect_agent"),
    (agent_client.AgentClient, "connect"),
    (agent_client.AgentClient, "lease_acquire"),
    (agent_client.AgentClient, "check_release"),
    (agent_client.AgentClient, "upload"),
    (agent_client.AgentClient, "prepare"),
    (agent_client.AgentClient, "release_start"),
    (agent_client.AgentClient, "release_watch"),
    (agent_client.AgentClient, "rollout"),
    (agent_client.AgentClient, "lease_release"),
    (agent_client.AgentClient, "close"),
    (session.ServerSession, "connect"),
    (session.ServerSession, "close"),
    (delta.Deltas, "hashes"),
    (delta.Deltas, "delta"),
    (pipeline, "build_artifact"),
    (session, "ensure_agent"),
    (agent_setup, "install_agent"),
    (asyncssh.SSHClientConnection, "create_process"),
    (asyncssh.SSHClientConnection, "open_unix_connection"),
]
THREADED: list[tuple[Any, str]] = [(agent_setup, "build_zipapp"), (build_module, "collect_source_set")]


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - began)

    return wrapper


def _timed_sync(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - began)

    return wrapper


def instrument() -> None:
    for owner, attr in WRAPPED:
        label = f"{owner.__name__.split('.')[-1]}.{attr}"
        static = inspect.getattr_static(owner, attr)
        if isinstance(static, classmethod):
            setattr(owner, attr, classmethod(_timed(label, static.__func__)))
        else:
            setattr(owner, attr, _timed(label, static))
    for owner, attr in THREADED:
        setattr(owner, attr, _timed_sync(f"{owner.__name__.split('.')[-1]}.{attr}", getattr(owner, attr)))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--first", action="store_true", help="no warm-up: the deploy installs the agents")
    parser.add_argument("--rtt", type=float, default=0.0, help="round-trip time of the measured deploy, ms")
    parser.add_argument("--size", type=int, default=5_000_000, help="bytes of source in the app")
    parser.add_argument("--cprofile", help="write a cProfile of the measured deploy here")
    parser.add_argument(
        "--py-spy",
        dest="py_spy",
        help="instead: run the measured deploy as `tako deploy --json` under this py-spy binary "
        "(wall clock, --idle) and write its collapsed stacks to py-spy.txt here",
    )
    args = parser.parse_args()
    with bench_fleet(args.servers) as fleet, contextlib.ExitStack() as stack:
        app = make_app(fleet.workdir / "app", fleet.servers, size=args.size).parent
        if not args.first:
            set_version(app, "warm")
            await run_tako(app / "tako.toml", fleet.env, fleet.workdir / "scratch")
        set_version(app, "measured")
        if args.rtt:
            targets = [(s.address, s.port) for s in fleet.servers]
            proxy = stack.enter_context(DelayProxy(targets, Link.of(args.rtt)))
            home = fleet.base / "home-delayed"
            home.mkdir()
            for server in via_proxy(fleet.servers, proxy, fleet.base / "known_hosts-delayed"):
                add_server(server.server, home=home)
            fleet.env["TAKO_HOME"] = str(home)
        if args.py_spy:
            out = Path.cwd() / "py-spy.txt"
            tako = [sys.executable, str(ROOT / "bench" / "tako_rss.py"), "deploy", "--json", "--yes"]
            spy = [args.py_spy, "record", "--idle", "--rate", "1000", "--format", "raw", "-o", str(out)]
            env = dict(fleet.env, BENCH_RSS_FILE=str(fleet.workdir / "rss"))
            await asyncio.to_thread(
                subprocess.run,
                [*spy, "--", *tako],
                cwd=app,
                env=env,
                check=True,
                timeout=120,
                capture_output=True,
            )
            print(f"collapsed stacks in {out}")
            return
        os.environ.update(fleet.env)
        target = load_target(app / "tako.toml", None)
        events: list[Event] = []
        instrument()
        profiler = cProfile.Profile() if args.cprofile else None
        began = time.perf_counter()
        if profiler:
            profiler.enable()
        finished = await deploy(
            target,
            secrets={},
            sink=events.append,
            prompter=None,  # type: ignore[arg-type]  # --yes: never asked
            options=DeployOptions(holder=f"{getpass.getuser()} (bench)", confirmed=True),
        )
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
        wall = time.perf_counter() - began
    rows = [
        [
            name,
            str(len(v)),
            f"{1000 * min(v):.1f}",
            f"{1000 * sorted(v)[len(v) // 2]:.1f}",
            f"{1000 * max(v):.1f}",
            *([f"{1000 * sorted(v)[len(v) // 2] / args.rtt:.1f}"] if args.rtt else []),
        ]
        for name, v in TIMES.items()
    ]
    print(
        f"deploy ok={finished.ok} in {wall:.3f} s (in process, {args.servers} servers, RTT {args.rtt:g} ms)\n"
    )
    trips = ["median / RTT"] if args.rtt else []
    print(table(["call", "calls", "min ms", "median ms", "max ms", *trips], rows))


if __name__ == "__main__":
    asyncio.run(main())
