"""Shared fixtures: a temporary TAKO_HOME and the real-SSH test fleet (see tests/fleet.py).

    def test_x(fleet: Fleet, tako_home: Path) -> None:
        s1, s2 = fleet(2)          # 2 servers, registered as s1, s2 in tako_home/servers.toml
        s1.server                  # the tako_core.config Server for it
        s1.drop_connections()      # cut its SSH sessions (kills the sshd processes serving them)

`any_fleet` runs a test over both kinds of host ("sshd" and "inprocess"); plain `fleet` uses sshd
where installed (and fails in CI when it is not). `pebble` is a real ACME CA for the session
(tests/pebble.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tako_core.config import add_server
from tako_core.demo.processes import end_processes_under
from tests.container import Container, missing_tools, start_container, stop_container
from tests.delayproxy import DelayProxy, Link, via_proxy
from tests.fleet import Fleet, FleetServer, HostPool, Kind, default_kind
from tests.pebble import Pebble, require_pebble, start_pebble
from tests.tmux import Tmux


@pytest.fixture(scope="session")
def host_pools() -> Iterator[Callable[[Kind], HostPool]]:
    """Session-wide SSH hosts, one pool per kind, created on first use and stopped at the end."""
    base = Path(tempfile.mkdtemp(prefix="tkpool"))
    pools: dict[Kind, HostPool] = {}

    def get(kind: Kind) -> HostPool:
        if kind not in pools:
            pools[kind] = HostPool(kind, base / kind)
        return pools[kind]

    yield get
    for pool in pools.values():
        pool.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tako_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TAKO_HOME for this test (set in the environment, so subprocesses see it too)."""
    home = tmp_path / "tako-home"
    home.mkdir()
    monkeypatch.setenv("TAKO_HOME", str(home))
    return home


def _fleet(kind: Kind, pools: Callable[[Kind], HostPool], home: Path) -> Iterator[Fleet]:
    fleet = Fleet(pools(kind), home)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def fleet(host_pools: Callable[[Kind], HostPool], tako_home: Path) -> Iterator[Fleet]:
    """`fleet(n)` → n FleetServers on real sshd (in-process asyncssh hosts where sshd is absent)."""
    try:
        kind = default_kind()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield from _fleet(kind, host_pools, tako_home)


@pytest.fixture
def delayed_fleet(
    fleet: Fleet, tako_home: Path, tmp_path: Path
) -> Iterator[Callable[[int, Link], list[FleetServer]]]:
    """`delayed_fleet(n, link)` → n more servers of `fleet`, each behind a delay proxy (its own
    process) on `link`; TAKO_HOME's inventory and their known_hosts name the proxy's ports."""
    with contextlib.ExitStack() as proxies:

        def make(count: int, link: Link) -> list[FleetServer]:
            direct = fleet(count)
            proxy = proxies.enter_context(DelayProxy([(s.address, s.port) for s in direct], link))
            servers = via_proxy(direct, proxy, tmp_path / f"known_hosts.proxy{proxy.ports[0]}")
            for server in servers:
                add_server(server.server, home=tako_home, replace=True)
            return servers

        yield make


@pytest.fixture(params=["sshd", "inprocess"])
def any_fleet(
    request: pytest.FixtureRequest, host_pools: Callable[[Kind], HostPool], tako_home: Path
) -> Iterator[Fleet]:
    """Like `fleet`, once over OpenSSH and once over the in-process host."""
    kind: Kind = request.param
    if kind == "sshd":
        try:
            kind = default_kind()
        except RuntimeError as err:
            pytest.fail(str(err))
    yield from _fleet(kind, host_pools, tako_home)


@pytest.fixture(autouse=True)
def _nothing_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails halfway must not leave its agents or app instances running."""
    # Asked for before the test runs, so tmp_path is torn down after this, not before.
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp_path is not None:
        end_processes_under(tmp_path, term_wait=3.0)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    """A private tmux server for the test, killed afterwards with everything it ran."""
    mux = Tmux(f"tako-test-{os.getpid()}-{tmp_path.name}")
    try:
        yield mux
    finally:
        subprocess.run(
            ["tmux", "-L", mux.socket, "kill-server"], capture_output=True, check=False, timeout=10
        )


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    """A booted systemd (Debian in systemd-nspawn) for the session, powered off at its end; see
    tests/container.py. Missing tools skip the test, except in CI where they fail it."""
    missing = missing_tools()
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install mmdebstrap systemd-container"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    booted, workdir = start_container()
    try:
        yield booted
    finally:
        stop_container(booted, workdir)


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """Pebble and its mock DNS for the session (5% of good nonces rejected, as by default)."""
    require_pebble()
    ca = start_pebble(tmp_path_factory.mktemp("pebble"))
    try:
        yield ca
    finally:
        ca.stop()
