"""Router throughput and latency: direct vs the agent's router (llhttp and h11 parsers) vs Caddy.

One run, side by side, on loopback: a raw asyncio upstream app, the router in its own process (as the
agent runs it) for each parser, and Caddy's reverse_proxy, all in front of the same upstream; wrk
against each in turn. Prints a table and writes it as the "Router" section of bench/BENCHMARKS.md.

    .venv/bin/python bench/router.py [--duration 3] [--rounds 3] [--connections 50] [--no-write]
    .venv/bin/python bench/router.py --baseline DIR [--duration 3] [--rounds 5]

Targets take turns (round robin, `--rounds` times, the order reversed every other round) and each
figure is the median of its rounds, so a burst of load from elsewhere on the machine hits every target
alike rather than one row.

`--baseline DIR` compares routers instead: the one of another checkout of tako at DIR (e.g. a
`git worktree add` of an older commit) against this one, each parser, taking turns in the same way,
and prints a before/after table; BENCHMARKS.md is left alone.

Every process it starts is stopped at the end (terminate, then kill after 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h11

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "bench" / "BENCHMARKS.md"
CADDY = "/usr/bin/caddy"
HOST_PYTHON = "/usr/bin/python3"  # what the agent runs under on a server
WRK = "/usr/bin/wrk"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"


# --- the processes under test ---------------------------------------------------------------------

class _App(asyncio.Protocol):
    """The fastest honest upstream: answers every complete request head with a fixed response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        count = buf.count(b"\r\n\r\n")
        if count and self.transport is not None:
            self.transport.write(RESPONSE * count)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
        self.buf = buf


async def _serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_App, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def _serve_router(
    port: int, upstream_ports: list[int], backend: str, switch_every: float, root: Path
) -> None:
    """The router of the checkout at `root`, as the agent runs it. With two upstreams and
    `switch_every` > 0 it does what a rollout does, over and over: route to the other upstream, then
    drain the previous one."""
    sys.path.insert(0, str(root))
    from tako_core.agent.router import Router, Upstream

    router = Router("127.0.0.1", port, backend=None if backend == "auto" else backend)
    await router.start()
    upstreams = [Upstream("127.0.0.1", p) for p in upstream_ports]
    router.set_route("bench", ["127.0.0.1"], upstreams[:1])
    if switch_every <= 0:
        await asyncio.Event().wait()
    for n in range(1_000_000):  # until terminated
        await asyncio.sleep(switch_every)
        router.set_route("bench", ["127.0.0.1"], [upstreams[(n + 1) % 2]])
        await router.drain(upstreams[n % 2], 30.0)


# --- orchestration --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def _caddy_config(port: int, upstream_port: int) -> dict[str, object]:
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {"http": {"servers": {"bench": {
            "listen": [f"127.0.0.1:{port}"],
            "automatic_https": {"disable": True},
            "routes": [{"handle": [{"handler": "reverse_proxy",
                                    "upstreams": [{"dial": f"127.0.0.1:{upstream_port}"}]}]}],
        }}}},
    }


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str
    cpu_us: float = 0.0  # CPU time of the measured process per request: robust to a noisy machine


def _median(rounds: list[Result]) -> Result:
    """Each figure's median over the rounds (errors: the total)."""
    errors = [r.errors for r in rounds if r.errors != "0"]
    return Result(
        rounds[0].name,
        statistics.median(r.rps for r in rounds),
        statistics.median(r.p50_ms for r in rounds),
        statistics.median(r.p99_ms for r in rounds),
        "; ".join(errors) or "0",
        statistics.median(r.cpu_us for r in rounds),
    )


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _wrk(name: str, port: int, duration: int, connections: int, pid: int | None = None, *,
         url: str | None = None, options: tuple[str, ...] = ()) -> Result:
    """wrk against http://127.0.0.1:port/ (or `url`), with more wrk `options` (e.g. a header)."""
    cpu_before = _cpu_seconds(pid) if pid else 0.0
    threads = min(2, connections)
    out = subprocess.run(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", *options,
         url or f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = "; ".join(line.strip() for line in out.splitlines()
                       if "Socket errors" in line or "Non-2xx" in line) or "0"
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu_us = (_cpu_seconds(pid) - cpu_before) / requests * 1e6 if pid else 0.0
    return Result(name, rps, p50, p99, errors, cpu_us)


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    caddy = subprocess.run([CADDY, "version"], capture_output=True, text=True).stdout.split()[0]
    load = Path("/proc/loadavg").read_text().split()[0]
    return (f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}, Caddy {caddy}, "
            f"load average {load} when the run ended")


def _table(results: list[Result]) -> str:
    direct = results[0]
    caddy = next(r for r in results if r.name.startswith("Caddy"))
    rows = ["| target | req/s | p50 ms | p99 ms | req/s vs direct | req/s vs Caddy | p99 vs direct "
            "| CPU µs/req (that process) | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rows.append(f"| {r.name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                    f"{r.rps / direct.rps:.2f}x | {r.rps / caddy.rps:.2f}x | "
                    f"{r.p99_ms / direct.p99_ms:.2f}x | {r.cpu_us:.0f} | {r.errors} |")
    return "\n".join(rows)


def _latency_table(results: list[Result]) -> str:
    direct = results[0]
    rows = ["| target | req/s | p50 ms | p99 ms | p50 added vs direct | p99 vs direct |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r.name} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                    f"{(r.p50_ms - direct.p50_ms) * 1000:+.0f} µs | {r.p99_ms / direct.p99_ms:.2f}x |")
    return "\n".join(rows)


def _write_section(section: str, heading: str = "Router") -> None:
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    # Replace our own section (up to the next "## " heading) and leave everyone else's alone.
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = BENCHMARKS.with_suffix(".md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, BENCHMARKS)


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "(not installed)"


def _host_bundle(tmp: Path) -> tuple[Path, str] | None:
    """What the agent finds beside tako_core on a server whose python3 is HOST_PYTHON, and how to
    name it: h11 (as in the zipapp), plus the httptools wheel `tako servers setup` would ship to it
    (unpacked as setup does) unless that python3 has its own. None without a HOST_PYTHON."""
    # Imported here: the router process runs this file under the host python, without tako_core.
    from tako_core.transport.agent_wheels import PROBE, ServerPython, fetch_httptools

    if not Path(HOST_PYTHON).exists():
        return None
    bundle = tmp / "bundle"
    shutil.copytree(Path(h11.__file__).parent, bundle / "h11")
    env = {**os.environ, "PATH": f"{Path(HOST_PYTHON).parent}:{os.environ['PATH']}"}
    probe = subprocess.run(["sh", "-c", PROBE], capture_output=True, text=True, env=env, check=False)
    python = ServerPython.parse(probe.stdout)
    if python is None or python.has_httptools:
        return bundle, "its own httptools" if python else "no python3 answered"
    fetched = fetch_httptools(python, tmp)
    if fetched.wheel is None:
        return bundle, f"no httptools: h11; {fetched.reason}"
    with zipfile.ZipFile(fetched.wheel) as wheel:
        wheel.extractall(bundle)
    return bundle, f"httptools wheel shipped by setup: {fetched.wheel.name.split('-')[1]}"


Target = tuple[str, int, int]  # name, port, pid of the process whose CPU time is measured


class _Processes:
    """The processes under test, each returned once its port answers; all stopped on exit (terminate,
    then kill after 5 s)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="tako-bench-router-"))

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> int:
        """Start `argv`, which listens on `port`; its pid."""
        log = open(self.tmp / f"{port}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._procs.append(proc)
        _wait_port(port, proc)
        return proc.pid

    def upstream(self) -> tuple[int, int]:
        port = _free_port()
        return port, self.spawn([sys.executable, __file__, "upstream", str(port)], port)

    def router(self, upstreams: list[int], backend: str, *, switch_every: float = 0.0, root: Path = ROOT,
               python: str = sys.executable, env: dict[str, str] | None = None) -> tuple[int, int]:
        """A router process (port, pid) in front of `upstreams`, importing tako_core from `root`."""
        port = _free_port()
        ups = ",".join(map(str, upstreams))
        argv = [python, __file__, "router", str(port), ups, backend, str(switch_every), str(root)]
        return port, self.spawn(argv, port, env)


def _measure(targets: list[Target], args: argparse.Namespace) -> tuple[list[Result], list[Result]]:
    """Medians under load and over one connection, per target. The targets take turns, their order
    reversed every other round, so neither drifting load nor a place in the order favours one."""
    for _, port, _ in targets:  # warm up every target (connection pools, caches) before measuring
        _wrk("warm-up", port, 1, args.connections)
    loaded: list[list[Result]] = [[] for _ in targets]
    single: list[list[Result]] = [[] for _ in targets]
    for n in range(args.rounds):
        order = list(enumerate(targets))
        if n % 2:
            order.reverse()
        for i, (name, port, pid) in order:
            loaded[i].append(_wrk(name, port, args.duration, args.connections, pid))
        for i, (name, port, _) in order:
            # One connection, one request at a time: what a hop adds when nothing queues.
            single[i].append(_wrk(name, port, args.duration, 1))
    return [_median(r) for r in loaded], [_median(r) for r in single]


def _compare_table(loaded: list[Result], single: list[Result]) -> str:
    """Rows of (before, after) pairs: req/s and p99 under load, CPU per request, one-connection p50."""
    rows = ["| parser | req/s before | req/s after | after/before | p99 ms before | p99 ms after "
            "| CPU µs/req before | CPU µs/req after | 1 conn p50 ms before | 1 conn p50 ms after | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i in range(0, len(loaded), 2):
        (b, a), (sb, sa) = loaded[i:i + 2], single[i:i + 2]
        parser = b.name.removeprefix("before ")
        errors = "; ".join(e for e in (b.errors, a.errors, sb.errors, sa.errors) if e != "0") or "0"
        rows.append(f"| {parser} | {b.rps:,.0f} | {a.rps:,.0f} | {a.rps / b.rps:.2f}x | {b.p99_ms:.2f} | "
                    f"{a.p99_ms:.2f} | {b.cpu_us:.0f} | {a.cpu_us:.0f} | {sb.p50_ms:.3f} | {sa.p50_ms:.3f} "
                    f"| {errors} |")
    return "\n".join(rows)


def _compare(args: argparse.Namespace, baseline: Path) -> None:
    if not (baseline / "tako_core" / "agent" / "router.py").is_file():
        raise SystemExit(f"{baseline} is not a checkout of tako")
    with _Processes() as procs:
        up, _ = procs.upstream()
        targets: list[Target] = []
        for backend in ("httptools", "h11"):
            for label, root in (("before", baseline), ("after", ROOT)):
                port, pid = procs.router([up], backend, root=root)
                targets.append((f"{label} {backend}", port, pid))
        loaded, single = _measure(targets, args)
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · {_machine()}")
    print(f"before: {baseline} · after: {ROOT} · {args.rounds} rounds, wrk -t2 -c{args.connections} "
          f"-d{args.duration}s and -t1 -c1 -d{args.duration}s\n")
    print(_compare_table(loaded, single))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target; medians reported")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--baseline", type=Path, help="compare with the router of the tako checkout there")
    args = parser.parse_args()
    if shutil.which(WRK) is None or shutil.which(CADDY) is None:
        raise SystemExit(f"needs {WRK} and {CADDY}")
    if args.baseline is not None:
        _compare(args, args.baseline.resolve())
        return
    with _Processes() as procs:
        up, pid = procs.upstream()
        targets = [("direct to the app", up, pid)]
        for backend in ("httptools", "h11"):
            port, pid = procs.router([up], backend)
            targets.append((f"tako router ({backend})", port, pid))
        # The same router switching between two upstream processes every 100 ms, drain included.
        up2, _ = procs.upstream()
        port, pid = procs.router([up, up2], "httptools", switch_every=0.1)
        targets.append(("tako router (httptools), switching every 100 ms", port, pid))
        # As on a server: the host's python3 with h11 beside tako_core (as in the zipapp), and the
        # httptools wheel setup ships to a python3 without one.
        host = _host_bundle(procs.tmp)
        if host is not None:
            env = {**os.environ, "PYTHONPATH": str(host[0])}
            port, pid = procs.router([up], "auto", python=HOST_PYTHON, env=env)
            targets.append((f"tako router, {HOST_PYTHON} ({host[1]})", port, pid))
        else:
            print(f"({HOST_PYTHON} is missing: no row for the host's own Python)", file=sys.stderr)
        caddy_port = _free_port()
        config = procs.tmp / "caddy.json"
        config.write_text(json.dumps(_caddy_config(caddy_port, up)))
        env = {**os.environ, "XDG_DATA_HOME": str(procs.tmp), "XDG_CONFIG_HOME": str(procs.tmp),
               "HOME": str(procs.tmp)}
        targets.append(("Caddy 2.6 reverse_proxy", caddy_port,
                        procs.spawn([CADDY, "run", "--config", str(config)], caddy_port, env)))
        loaded, single = _measure(targets, args)

    table = _table(loaded)
    latency = _latency_table(single)
    print(table, latency, sep="\n\n")
    if not args.no_write:
        command = (f".venv/bin/python bench/router.py --duration {args.duration} "
                   f"--rounds {args.rounds} --connections {args.connections}")
        minutes = len(loaded) * 2 * args.rounds * (args.duration + 1) // 60 + 1
        _write_section(
            f"## Router\n\n"
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · {_machine()}; wrk, the app and the proxy "
            f"share the cores. Reproduce: `{command}` (about {minutes} min). "
            f"Every figure is the median of {args.rounds} rounds in which the targets took turns.\n\n"
            f"Each proxy runs in its own process in front of the same raw asyncio app. The router rows "
            f"without a path run under the venv's Python with httptools {_version('httptools')} or "
            f"h11 {_version('h11')}; the `{HOST_PYTHON}` row runs as the agent does on a server: the "
            f"host's Python (no httptools of its own), h11 beside tako_core as in the zipapp, and "
            f"the httptools wheel `tako servers setup` ships to it (picked automatically). "
            f"\"switching\" swaps the route between two app processes "
            f"every 100 ms and drains the old one, as a rollout does, while wrk runs.\n\n"
            f"### Under load: `wrk -t2 -c{args.connections} -d{args.duration}s --latency`, "
            f"after a 1 s warm-up\n\n{table}\n\n"
            f"CPU µs/req is the CPU time (user + system) of that one process divided by the requests "
            f"it served: the proxy's own cost per request, steadier than req/s on a busy machine. "
            f"At saturation a closed-loop client's latency is about connections / throughput, so "
            f"p99 there mostly restates req/s; the table below isolates what a hop adds.\n\n"
            f"### One connection, one request at a time: `wrk -t1 -c1 -d{args.duration}s --latency`"
            f"\n\n{latency}\n\n"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "upstream":
        asyncio.run(_serve_upstream(int(sys.argv[2])))
    elif len(sys.argv) > 6 and sys.argv[1] == "router":
        asyncio.run(_serve_router(int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")], sys.argv[4],
                                  float(sys.argv[5]), Path(sys.argv[6])))
    else:
        main()
