"""A fleet of SSH servers for benchmarks, outside pytest: the test fleet's own classes, driven directly.

    with bench_fleet(3) as fleet:          # 3 sshd on 127.0.0.11.. registered in a temp TAKO_HOME
        fleet.servers[0].ssh_command("true")
        fleet.env                          # environment for `tako` subprocesses (TAKO_HOME, cache)
        with fleet.fresh_roots() as fresh: # the same hosts with new, empty roots (a first deploy)
            ...

Every server's router listens on 127.0.0.1 (its own port), so one load generator reaches them all.
On leaving: every process under the fleet's roots (agents, instances) is stopped, then the SSH hosts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tako_core.config import add_server  # noqa: E402
from tests.fleet import Fleet, FleetServer, HostPool, Kind, default_kind, free_port  # noqa: E402


@dataclass
class BenchFleet:
    kind: Kind
    servers: list[FleetServer]
    home: Path  # TAKO_HOME
    workdir: Path  # scratch space for apps, artifacts, logs
    env: dict[str, str]  # for `tako` subprocesses
    base: Path
    pool: HostPool

    def sshd_pids(self) -> list[int]:
        """The fleet's sshd listeners (each reaps the per-connection processes it forks)."""
        marker = str(self.base / "pool").encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_bytes().strip() == b"sshd" and marker in (
                        entry / "cmdline"
                    ).read_bytes():
                        found.append(int(entry.name))
        return found

    @contextlib.contextmanager
    def fresh_roots(self) -> Iterator[list[FleetServer]]:
        """The same SSH hosts with new, empty roots (no agent, no app), registered nowhere; whatever
        runs under those roots is stopped on exit."""
        fleet = Fleet(self.pool, self.home)
        try:
            yield _routed(fleet(len(self.servers), register=False))
        finally:
            fleet.close()


def _routed(servers: list[FleetServer]) -> list[FleetServer]:
    """Each server's router on 127.0.0.1 (its own port), so one load generator reaches them all."""
    for server in servers:
        server.http_host = "127.0.0.1"
        server.http_port = free_port("127.0.0.1")
    return servers


@contextlib.contextmanager
def bench_fleet(count: int, kind: Kind | None = None) -> Iterator[BenchFleet]:
    """`count` servers of `kind` (default: sshd where installed), gone again on exit."""
    kind = kind or default_kind()
    base = Path(tempfile.mkdtemp(prefix="tkbench"))
    home = base / "home"
    home.mkdir()
    pool = HostPool(kind, base / "pool")
    fleet = Fleet(pool, home)
    try:
        servers = _routed(fleet(count, register=False))
        for server in servers:
            add_server(server.server, home=home)
        env = dict(os.environ, TAKO_HOME=str(home), XDG_CACHE_HOME=str(base / "cache"))
        yield BenchFleet(kind, servers, home, base / "work", env, base, pool)
    finally:
        fleet.close()
        pool.close()
        shutil.rmtree(base, ignore_errors=True)
