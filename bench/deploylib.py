"""What the deploy benchmarks share: the ~5 MB bench app, one measured `tako deploy`, the OpenSSH
baseline, probes through the routers, statistics and the BENCHMARKS.md writer.

The bench app serves HTTP on 127.0.0.1:$PORT and appends `<T0> <ready> <version>` to
$TAKO_DATA_DIR/boot.log once it listens (T0: the start command's first act, so `ready - T0` is the
app's own boot time). Its release command prints `release-exit-at <time.time()>` as its last act and
exits at once (os._exit), so the gate latency can be read off the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetlib import ROOT

from tako_core.build import build_artifact
from tests.agentkit.kit import read_keep_alive, read_response
from tests.fleet import FleetServer, free_port, write_app

APP = "bench"
ENV = "production"
ROUTE = f"{APP}.test"
BENCHMARKS = ROOT / "bench" / "BENCHMARKS.md"
START = "export BENCH_T0=$(date +%s.%N); exec python3 app.py"
RELEASE = "python3 release.py"

_APP_PY = '''\
"""The bench app: GET anything -> "<version> <port>\\n"; records when it is ready to serve."""
import http.server, os, time
VERSION = open("VERSION").read().strip()
PORT = os.environ["PORT"]
BODY = f"{VERSION} {PORT}\\n".encode()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler)
with open(os.path.join(os.environ["TAKO_DATA_DIR"], "boot.log"), "a") as log:
    log.write(f"{os.environ.get('BENCH_T0', '0')} {time.time():.6f} {VERSION} {PORT}\\n")
server.serve_forever()
'''

_RELEASE_PY = """\
import os, sys, time
sys.stdout.write(f"release-exit-at {time.time():.6f}\\n")
sys.stdout.flush()
os._exit(0)
"""

_WORDS = tuple(
    "".join(
        "self def return if else for in while import from class None True False try except with as "
        "yield async await lambda not and or is raise pass break continue request response user "
        "order item items value values key keys config settings session query result results data "
        "payload handler router model view template cache logger error errors status total count "
        "index offset limit page name title price amount created updated deleted id uuid token path "
        "url host port "
    ).split()
)


# --- the app ----------------------------------------------------------------------------------------


def make_app(
    directory: Path, servers: list[FleetServer], *, instances: int = 1, size: int = 5_000_000, seed: int = 8
) -> Path:
    """The bench app with ~`size` bytes of code-like source (zstd packs it ~4-5x, like real code)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(_APP_PY)
    (directory / "release.py").write_text(_RELEASE_PY)
    rng = random.Random(seed)
    src = directory / "src"
    src.mkdir(exist_ok=True)
    per_file = 25_000
    for n in range(max(size // per_file, 1)):
        (src / f"module_{n:03d}.py").write_text(_code(rng, per_file, n))
    set_version(directory, "v0")
    cfg = write_app(directory, servers, name=APP, env=ENV, start=START, release=RELEASE)
    if instances != 1:
        with cfg.open("a") as f:  # [envs.production] is the file's last table
            f.write(f"instances = {instances}\n")
    return cfg


def _code(rng: random.Random, size: int, n: int) -> str:
    lines: list[str] = [f'"""Module {n}: generated for the deploy benchmark."""', "import os", ""]
    length = 0
    while length < size:
        depth = rng.choice((0, 1, 1, 2, 2, 2, 3))
        words = rng.sample(_WORDS, rng.randint(2, 7))
        if rng.random() < 0.15:
            line = f"def {words[0]}_{words[1]}({', '.join(words[2:])}):"
        elif rng.random() < 0.5:
            line = f"{words[0]} = {words[1]}.{words[-1]}({rng.randint(0, 999)})"
        else:
            line = " ".join(words)
        line = "    " * depth + line
        lines.append(line)
        length += len(line) + 1
    return "\n".join(lines) + "\n"


def set_version(app: Path, version: str) -> None:
    (app / "VERSION").write_text(version + "\n")


# --- one measured `tako deploy` -----------------------------------------------------------------------


@dataclass
class TakoRun:
    spawned: float  # time.time() just before the process started
    exited: float
    code: int
    events: list[dict[str, object]]
    client_peak_kb: int
    stderr: str
    returned: float  # time.time() when the command returned, before the interpreter's exit
    cpu: float  # CPU seconds the client used

    @property
    def wall(self) -> float:
        return self.exited - self.spawned

    def of(self, event: str, **match: object) -> list[dict[str, object]]:
        return [
            e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())
        ]

    def phase_done(self, server: str, phase: str) -> dict[str, object]:
        done = [
            e
            for e in self.of("PhaseChanged", server=server, phase=phase)
            if e["state"] in ("done", "skipped")
        ]
        if not done:
            raise RuntimeError(f"no finished {phase} phase for {server}:\n{self.stderr[-2000:]}")
        return done[-1]


async def run_tako(cfg: Path, env: dict[str, str], scratch: Path, limit: float = 300) -> TakoRun:
    """`tako deploy --json --yes` as a user runs it; raises when it fails."""
    rss_file = scratch / "client.rss"
    await asyncio.to_thread(_fresh, rss_file)
    argv = [sys.executable, str(ROOT / "bench" / "tako_rss.py"), "deploy", "--json", "--yes", "-c", str(cfg)]
    spawned = time.time()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cfg.parent,
        env=dict(env, BENCH_RSS_FILE=str(rss_file)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    exited = time.time()
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    fields = rss_file.read_text().split() if rss_file.exists() else []
    peak, returned, cpu = [*fields, "0", "0", "0"][:3]
    run = TakoRun(
        spawned,
        exited,
        proc.returncode or 0,
        events,
        int(peak),
        err.decode(errors="replace"),
        float(returned),
        float(cpu),
    )
    if run.code != 0:
        raise RuntimeError(f"tako deploy exited with {run.code}:\n{run.stderr[-3000:]}")
    return run


def _fresh(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


def tako_phases(run: TakoRun, servers: Sequence[str]) -> dict[str, float]:
    """Wall-clock segments of one deploy along its critical path (each ends when the last server ends it)."""
    started = float(run.of("DeployStarted")[0]["at"])  # type: ignore[arg-type]
    finished = float(run.of("DeployFinished")[0]["at"])  # type: ignore[arg-type]
    gate = float(run.of("GateOpened")[0]["at"])  # type: ignore[arg-type]

    def last(phase: str) -> float:
        return max(float(run.phase_done(s, phase)["at"]) for s in servers)  # type: ignore[arg-type]

    connected, installed, rolled = last("Connect"), last("Install"), last("Rollout")
    build = run.phase_done(None, "Build")  # type: ignore[arg-type]
    return {
        "process start": started - run.spawned,
        "build (local)": float(build["seconds"]),  # type: ignore[arg-type]
        "connect + agent + lease": connected - started,
        "upload + install": installed - connected,
        "release (gate)": gate - installed,
        "rollout": rolled - gate,
        "finalize": finished - rolled,
        "close (sessions, loop)": run.returned - finished,
        "interpreter exit": run.exited - run.returned,
        "total": run.wall,
    }


def gate_latency(run: TakoRun, leader: str, followers: Sequence[str]) -> float | None:
    """Seconds from the leader's release command exiting to the first follower leaving the wait."""
    stamps = [
        float(str(e["line"]).split()[1])
        for e in run.of("OutputLine", server=leader, phase="Release")
        if str(e["line"]).startswith("release-exit-at ")
    ]
    if not stamps or not followers:
        return None
    left = [float(run.phase_done(f, "Release")["at"]) for f in followers]  # type: ignore[arg-type]
    return min(left) - stamps[-1]


# --- reading the servers ------------------------------------------------------------------------------


def tako_data(server: FleetServer) -> Path:
    return Path(server.root) / "apps" / APP / ENV / "data"


def boot_records(data_dir: Path, version: str) -> dict[str, tuple[float, float]]:
    """(T0, ready) of each instance of `version` (by port) that booted, the latest per port."""
    log = data_dir / "boot.log"
    found = {}
    if log.exists():
        for line in log.read_text().splitlines():
            t0, ready, v, port = line.split()
            if v == version:
                found[port] = (float(t0), float(ready))
    return found


def agent_pids(servers: Iterable[FleetServer]) -> list[int]:
    return [pid for s in servers if (pid := s.agent_pid()) is not None]


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU (user + system) of `pids` and of their children they have reaped, in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, field_name: str) -> int:
    """VmRSS / VmHWM of a process in kB, 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


# --- probes through the routers -----------------------------------------------------------------------


@dataclass
class Probe:
    """One keep-alive connection GETting through a router every `interval` s, bounded in count and time;
    remembers when each answer ("<version> <port>": each instance's own) came first."""

    port: int
    interval: float = 0.002
    max_requests: int = 100_000
    max_seconds: float = 120.0
    first_seen: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    failures: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        writer = None
        while not self._stop.is_set() and time.monotonic() < deadline and self.requests < self.max_requests:
            self.requests += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(f"GET / HTTP/1.1\r\nHost: {ROUTE}\r\n\r\n".encode())
                body, keep = await asyncio.wait_for(read_keep_alive(reader), 5)
                if not keep:
                    writer.close()
                    writer = None
                self.first_seen.setdefault(body, time.time())
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                self.failures += 1
                if writer is not None:
                    writer.close()
                writer = None
            await asyncio.sleep(self.interval)
        if writer is not None:
            writer.close()

    def stop(self) -> None:
        self._stop.set()


# --- the OpenSSH baseline -----------------------------------------------------------------------------

_NO_MASTER = ("-o", "ControlMaster=no", "-o", "ControlPath=none")


def ssh_argv(server: FleetServer, command: str, sharing: Sequence[str] = _NO_MASTER) -> list[str]:
    argv = server.ssh_command(command)
    return [argv[0], *sharing, *argv[1:]]


def scp_argv(server: FleetServer, local: Path, remote: str, sharing: Sequence[str] = _NO_MASTER) -> list[str]:
    return [
        "scp", "-q", "-F", "none", "-i", str(server.identity), "-P", str(server.port),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        *sharing, str(local), f"{server.user}@{server.address}:{remote}",
    ]  # fmt: skip


async def run_command(argv: list[str], limit: float = 60, *, log: Path | None = None) -> None:
    """Run `argv` to its end within `limit` s; raises with its stderr when it fails. With `log`, its
    output goes to that file instead of pipes: a command that leaves a process in the background
    (`ssh -f`) would hold the pipes open, and us waiting for their end."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("wb")) if log else asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    if proc.returncode != 0:
        text = await asyncio.to_thread(log.read_bytes) if log else err
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {text.decode(errors='replace')[-500:]}")


class Baseline:
    """The minimum by hand: scp the artifact and extract it (all servers in parallel), run the release
    command once on the leader, restart one app process per server (in parallel) and wait until each
    answers. Plain `ssh`/`scp`, no connection sharing, the fleet's identity and known_hosts."""

    sharing: Sequence[str] = _NO_MASTER  # the ssh options of every step

    def __init__(self, servers: list[FleetServer], app: Path, cache: Path) -> None:
        self.servers = servers
        self.app = app
        self.cache = cache
        self.ports = {s.name: free_port("127.0.0.1") for s in servers}

    def _dir(self, server: FleetServer) -> str:
        return f"{server.root}/baseline"

    def _ssh(self, server: FleetServer, command: str) -> list[str]:
        return ssh_argv(server, command, self.sharing)

    async def pack(self) -> Path:
        """The artifact tako would ship for the app as it is now (its own builder, not timed)."""
        artifact = await build_artifact(self.app, APP, ENV, None, {}, lambda _: None, cache_dir=self.cache)
        return artifact.path

    async def run(self, version: str) -> dict[str, float]:
        artifact = await self.pack()
        await asyncio.gather(
            *(run_command(self._ssh(s, f"mkdir -p {self._dir(s)}/data")) for s in self.servers)
        )
        t0 = time.time()
        shipped = await asyncio.gather(*(self._ship(s, artifact, version) for s in self.servers))
        t1 = time.time()
        leader = self.servers[0]
        release = f"cd {self._dir(leader)}/{version} && TAKO_DATA_DIR={self._dir(leader)}/data {RELEASE}"
        await run_command(self._ssh(leader, release))
        t2 = time.time()
        await asyncio.gather(*(self._restart(s, version) for s in self.servers))
        t3 = time.time()
        return {
            "scp": max(a for a, _ in shipped),
            "extract": max(b for _, b in shipped),
            "ship (scp + extract)": t1 - t0,
            "release": t2 - t1,
            "restart + ready": t3 - t2,
            "total": t3 - t0,
        }

    async def _ship(self, server: FleetServer, artifact: Path, version: str) -> tuple[float, float]:
        base = self._dir(server)
        began = time.time()
        await run_command(scp_argv(server, artifact, f"{base}/upload.tar.zst", self.sharing))
        copied = time.time()
        await run_command(
            self._ssh(
                server,
                f"mkdir -p {base}/{version} && tar --zstd -xf {base}/upload.tar.zst -C {base}/{version}",
            )
        )
        return copied - began, time.time() - copied

    def _restart_command(self, server: FleetServer, version: str) -> str:
        base = self._dir(server)
        return (
            f"cd {base}/{version} && {{ [ -f {base}/app.pid ] && kill $(cat {base}/app.pid) 2>/dev/null; }}; "
            f"export PORT={self.ports[server.name]} TAKO_DATA_DIR={base}/data; "
            f"setsid sh -c {shlex.quote(START)} > {base}/app.log 2>&1 < /dev/null & echo $! > {base}/app.pid"
        )

    async def _restart(self, server: FleetServer, version: str) -> None:
        await run_command(self._ssh(server, self._restart_command(server, version)))
        await wait_for_version(self.ports[server.name], version)


class SharedBaseline(Baseline):
    """The same job as a careful script does it with OpenSSH: one master connection per server
    (ControlMaster), opened in parallel first and closed last, every step multiplexed over it; and
    the restart command itself waits on the server until the app answers (polling from the client
    would cross the link, which on loopback costs nothing). Total = the sum of the timed steps."""

    def __init__(self, servers: list[FleetServer], app: Path, cache: Path, control_dir: Path) -> None:
        super().__init__(servers, app, cache)
        self.control_dir = control_dir  # short: the socket path must fit in 108 bytes
        self.sharing = ("-o", "ControlMaster=no", "-o", f"ControlPath={control_dir}/%C")

    async def run(self, version: str) -> dict[str, float]:
        began = time.time()
        await asyncio.gather(*(self._open_master(s) for s in self.servers))
        opened = time.time()
        try:
            steps = await super().run(version)
        finally:
            closing = time.time()
            await asyncio.gather(*(run_command(self._control(s, "-O", "exit")) for s in self.servers))
        closed = time.time()
        return {
            "connect (masters)": opened - began,
            **{k: v for k, v in steps.items() if k != "total"},
            "close (masters)": closed - closing,
            "total": (opened - began) + steps["total"] + (closed - closing),
        }

    def _control(self, server: FleetServer, *options: str) -> list[str]:
        argv = server.ssh_command()
        return [argv[0], "-o", f"ControlPath={self.control_dir}/%C", *options, *argv[1:]]

    async def _open_master(self, server: FleetServer) -> None:
        """`ssh -fN` as master: returns once authenticated, leaving the master in the background (it
        ends by itself 120 s after its last use, should the bench die before closing it)."""
        argv = self._control(server, "-o", "ControlMaster=yes", "-o", "ControlPersist=120", "-f", "-N")
        await run_command(argv, log=self.control_dir / f"{server.name}.log")

    async def _restart(self, server: FleetServer, version: str) -> None:
        ready = ready_check(self.ports[server.name], version)
        await run_command(self._ssh(server, f"{self._restart_command(server, version)}; {ready}"))


def ready_check(port: int, version: str, within: float = 20) -> str:
    """A shell command polling GET / on 127.0.0.1:`port` every 5 ms until it answers `version` (as
    `wait_for_version`, but on the server); exits 1 after `within` seconds."""
    code = (
        "import time, urllib.request\n"
        f"end = time.monotonic() + {within}\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        f"        req = urllib.request.Request('http://127.0.0.1:{port}/', headers={{'Host': '{ROUTE}'}})\n"
        "        with urllib.request.urlopen(req, timeout=2) as r:\n"
        f"            if r.read().split()[0] == b'{version}':\n"
        "                raise SystemExit(0)\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.005)\n"
        "raise SystemExit(1)\n"
    )
    return f"python3 -c {shlex.quote(code)}"


async def wait_for_version(port: int, version: str, within: float = 20) -> None:
    """Poll GET / every 5 ms until it answers `version`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if (await asyncio.wait_for(read_response(reader), 2)).split()[0] == version:
                    return
            finally:
                writer.close()
        await asyncio.sleep(0.005)
    raise RuntimeError(f"port {port} did not answer {version} within {within} s")


# --- statistics and the report ------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """'median (min-max)' of `values` times `scale`."""
    if not values:
        return "n/a"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now} · nproc {os.cpu_count()} ({cpu}), Python {platform.python_version()}, "
        f"load average {load:.2f} at the end"
    )


def write_section(title: str, body: str) -> None:
    """Replace the `## title` section of BENCHMARKS.md (up to the next `## `), or append it."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = BENCHMARKS.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    os.replace(tmp, BENCHMARKS)
