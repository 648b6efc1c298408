"""The test fleet: real SSH servers on 127.0.0.x for tests that deploy over SSH.

Each host is an OpenSSH `sshd -D` with its own config, host key, pid file and log, listening on
127.0.0.(10+i) on a free port. One client key is authorised on all of them; every fleet gets a
known_hosts file built from the host keys. Where /usr/sbin/sshd is absent the hosts are
`LocalSSHHost`s (asyncssh's server, in-process) running on a background thread's event loop, so both
kinds outlive a test's event loop and can be shared by the whole session.

Hosts are shared by the session; what a test sees (`FleetServer`: a fresh root directory, a free HTTP
port, a known_hosts file, an entry in the test's TAKO_HOME) is fresh per test. See tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import getpass
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import asyncssh

from tako_core.agent.accounts import account_name
from tako_core.config import Server, add_server
from tako_core.demo.processes import end_processes_under
from tako_core.transport.inprocess import LocalSSHHost, known_hosts_line, write_host_key

SSHD = Path("/usr/sbin/sshd")
Kind = Literal["sshd", "inprocess"]
T = TypeVar("T")

_SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
AllowTcpForwarding yes
MaxSessions 10
MaxStartups 100
UseDNS no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
# VERBOSE: a login's every request shows (tests/test_transport.py counts them).
# Bash sources ~/.bashrc for commands run over SSH unless SHLVL says it is nested; this machine's
# root .bashrc runs `pyenv init` (0.3 s a command) and puts pyenv's python3 first. A server's
# .bashrc usually returns early for non-interactive shells; SHLVL=1 gives the fleet that behaviour.
SetEnv SHLVL=1
"""


def default_kind() -> Kind:
    """sshd where installed; in CI a missing sshd is an error, never a silent fallback."""
    if SSHD.exists():
        return "sshd"
    if os.environ.get("CI") == "true":
        raise RuntimeError(
            f"CI=true but {SSHD} is missing: install openssh-server (apt-get install openssh-server)"
        )
    return "inprocess"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


# Ports a test picks now and an agent binds later: drawn below Linux's ephemeral range (32768+), so
# no port-0 bind in between (a delay proxy, an sshd, another test) can take one first.
_ROUTER_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def router_port(address: str) -> int:
    """A port free on `address` for an agent's router, none handed out twice in this process."""
    for _ in range(200):
        port = random.choice(_ROUTER_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free router port on {address}")


def _wait_for_banner(address: str, port: int, deadline: float, alive: Callable[[], bool]) -> None:
    """Until `deadline`: connect and read the SSH banner, proving the server accepts connections."""
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"ssh host {address}:{port} exited while starting")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1) as sock:
            if sock.recv(8).startswith(b"SSH-"):
                return
        time.sleep(0.01)
    raise RuntimeError(f"ssh host {address}:{port} did not accept connections in time")


class Host(Protocol):
    address: str
    port: int
    host_key: asyncssh.SSHKey
    kind: Kind

    def alive(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def drop_connections(self) -> int: ...
    def connections(self) -> int: ...


class SshdHost:
    """One OpenSSH sshd process in the foreground (`-D -e`), logging to its own file."""

    kind: Kind = "sshd"

    def __init__(self, workdir: Path, address: str, authorized_keys: Path) -> None:
        self.address = address
        self.port = free_port(address)
        self._dir = workdir
        self._dir.mkdir(parents=True, exist_ok=True)
        self.host_key = write_host_key(self._dir / "ssh_host_ed25519_key")
        self._authorized_keys = authorized_keys
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = self._dir / "sshd.log"

    def spawn(self) -> None:
        """Start sshd without waiting; `wait_ready` waits (so many can start at once)."""
        config = self._dir / "sshd_config"
        config.write_text(
            _SSHD_CONFIG.format(
                address=self.address,
                port=self.port,
                host_key=self._dir / "ssh_host_ed25519_key",
                pid_file=self._dir / "sshd.pid",
                authorized_keys=self._authorized_keys,
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout: float = 10) -> None:
        try:
            _wait_for_banner(self.address, self.port, time.monotonic() + timeout, self.alive)
        except RuntimeError as err:
            raise RuntimeError(f"{err}; sshd log:\n{self.log.read_text(errors='replace')[-2000:]}") from None

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self.drop_connections()

    def drop_connections(self) -> int:
        """SIGKILL every sshd process serving a connection (the session dies, user commands don't)."""
        victims = self._serving()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(victims)

    def connections(self) -> int:
        """How many sshd processes serve a connection (one or two per connection): 0 when none is open."""
        return len(self._serving())

    def _serving(self) -> list[int]:
        if self._proc is None:
            return []
        return [pid for pid in _descendants(self._proc.pid) if _comm(pid) == "sshd"]


class _LoopThread:
    """An event loop on a daemon thread, so in-process hosts outlive each test's own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fleet-ssh", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class InProcessHost:
    """A `LocalSSHHost` on the shared loop thread, shaped like `SshdHost`."""

    kind: Kind = "inprocess"

    def __init__(self, workdir: Path, address: str, authorized_keys: Path, loop: _LoopThread) -> None:
        self.address = address
        workdir.mkdir(parents=True, exist_ok=True)
        key_path = workdir / "ssh_host_ed25519_key"
        self.host_key = write_host_key(key_path)
        self._loop = loop
        self._host = LocalSSHHost(address, 0, host_key=key_path, authorized_keys=authorized_keys)
        self._running = False
        self.port = 0

    def start(self) -> None:
        self._loop.call(self._host.start())
        self.port = self._host.port
        self._running = True

    def alive(self) -> bool:
        return self._running

    def stop(self) -> None:
        self._loop.call(self._host.stop())
        self._running = False

    def drop_connections(self) -> int:
        async def drop() -> int:
            return self._host.drop_connections()

        return self._loop.call(drop())

    def connections(self) -> int:
        async def count() -> int:
            return self._host.connections

        return self._loop.call(count())


class HostPool:
    """The session's SSH hosts of one kind, started on demand: host i listens on 127.0.0.(10+i)."""

    def __init__(self, kind: Kind, workdir: Path) -> None:
        self.kind = kind
        self._dir = workdir
        self._dir.mkdir(parents=True, exist_ok=True)
        self.identity = self._dir / "id_ed25519"
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(self.identity)
        self.identity.chmod(0o600)
        self.authorized_keys = self._dir / "authorized_keys"
        self.authorized_keys.write_bytes(client_key.export_public_key())
        self._hosts: list[Host] = []
        self._loop = _LoopThread() if kind == "inprocess" else None

    def hosts(self, count: int) -> list[Host]:
        """The first `count` hosts, all accepting connections (restarting any a test stopped)."""
        while len(self._hosts) < count:
            self._hosts.append(self._new_host(len(self._hosts) + 1))
        wanted = self._hosts[:count]
        dead = [host for host in wanted if not host.alive()]
        for host in dead:
            if isinstance(host, SshdHost):
                host.spawn()  # all at once: three sshd start in ~50 ms together
            else:
                host.start()
        for host in dead:
            if isinstance(host, SshdHost):
                host.wait_ready()
        return wanted

    def _new_host(self, index: int) -> Host:
        address = f"127.0.0.{10 + index}"
        workdir = self._dir / f"host{index}"
        if self._loop is not None:
            return InProcessHost(workdir, address, self.authorized_keys, self._loop)
        return SshdHost(workdir, address, self.authorized_keys)

    def close(self) -> None:
        for host in self._hosts:
            with contextlib.suppress(Exception):
                host.stop()
        if self._loop is not None:
            self._loop.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class FleetServer:
    """One server of a test's fleet: a shared SSH host plus this test's own root and HTTP port."""

    name: str
    address: str
    port: int
    root: Path
    http_port: int
    https_port: int
    http_host: str
    user: str
    identity: Path
    known_hosts: Path
    host: Host

    @property
    def kind(self) -> Kind:
        return self.host.kind

    @property
    def server(self) -> Server:
        """The inventory entry tako uses to reach this server."""
        return Server(
            name=self.name,
            host=self.address,
            port=self.port,
            user=self.user,
            identity=self.identity,
            known_hosts=self.known_hosts,
            root=str(self.root),
            http_port=self.http_port,
            https_port=self.https_port,
            http_host=self.http_host,
        )

    def drop_connections(self) -> int:
        """Cut every SSH connection to this host, as a network failure would; returns how many."""
        return self.host.drop_connections()

    def stop(self) -> None:
        """Make the server unreachable (the next test gets it back)."""
        self.host.stop()

    def start(self) -> None:
        self.host.start()

    def ssh_command(self, *command: str, known_hosts: Path | None = None) -> list[str]:
        """argv for the system `ssh` client, with strict host key checking against our known_hosts."""
        return [
            "ssh",
            "-F", "none",
            "-i", str(self.identity),
            "-p", str(self.port),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5",
            f"{self.user}@{self.address}",
            *command,
        ]  # fmt: skip

    def agent_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "agent.pid").read_text().strip())
        except (OSError, ValueError):
            return None


class Fleet:
    """Per test: hands out servers from a pool, registers them in TAKO_HOME, cleans up after."""

    def __init__(self, pool: HostPool, tako_home: Path) -> None:
        self.pool = pool
        self.tako_home = tako_home
        # Short paths: ROOT/run/tako.sock must stay under the 108-byte unix socket limit.
        self._dir = Path(tempfile.mkdtemp(prefix="tkf"))
        self._dir.chmod(0o711)  # apps run as their own users (an agent as root): they must reach their root
        self.known_hosts = self._dir / "known_hosts"
        self.servers: list[FleetServer] = []

    def __call__(self, count: int, *, register: bool = True) -> list[FleetServer]:
        """`count` more servers named s1, s2, ... (continuing the numbering on a second call)."""
        first = len(self.servers)
        hosts = self.pool.hosts(first + count)[first:]
        user = getpass.getuser()
        added: list[FleetServer] = []
        for offset, host in enumerate(hosts):
            name = f"s{first + offset + 1}"
            root = self._dir / name
            root.mkdir()
            http_port, https_port = router_port(host.address), router_port(host.address)
            added.append(
                FleetServer(
                    name=name,
                    address=host.address,
                    port=host.port,
                    root=root,
                    http_port=http_port,
                    https_port=https_port,
                    http_host=host.address,
                    user=user,
                    identity=self.pool.identity,
                    known_hosts=self.known_hosts,
                    host=host,
                )
            )
        self.servers.extend(added)
        self._write_known_hosts()
        if register:
            for server in added:
                add_server(server.server, home=self.tako_home)
        return added

    def _write_known_hosts(self) -> None:
        lines = [known_hosts_line(s.address, s.port, s.host.host_key) for s in self.servers]
        self.known_hosts.write_text("".join(lines))

    def close(self) -> None:
        """Stop every agent (and anything else) that runs under one of this fleet's roots."""
        end_processes_under(self._dir, term_wait=3.0)
        remove_app_users(self._dir.glob("*/apps/*/*"))
        shutil.rmtree(self._dir, ignore_errors=True)


def remove_app_users(env_dirs: Iterable[Path]) -> None:
    """Remove the Unix user (and its group) an agent running as root made for each app/env dir."""
    for env_dir in env_dirs:
        name = account_name(env_dir.parent.name, env_dir.name)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)


def write_app(
    directory: Path,
    servers: list[FleetServer],
    *,
    name: str = "web",
    env: str = "production",
    start: str = "python3 -m http.server $PORT --bind 127.0.0.1",
    release: str | None = None,
    extra: str = "",
) -> Path:
    """A minimal tako.toml deploying to `servers` (the first is the leader); returns its path."""
    names = ", ".join(f'"{s.name}"' for s in servers)
    text = f'name = "{name}"\nstart = {_toml_str(start)}\n'
    if release is not None:
        text += f"release = {_toml_str(release)}\n"
    text += extra
    text += f'\n[envs.{env}]\nroute = "{name}.test"\nservers = [{names}]\n'
    path = directory / "tako.toml"
    path.write_text(text)
    return path


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, so no sshd outlives a killed run."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
