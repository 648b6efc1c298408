"""The demo's servers: `LocalSSHHost`s on 127.0.0.x, one root directory and one HTTP port each.

The hosts run on an event loop of their own, on a daemon thread: the deploy (and the Textual console
showing it) owns the main thread's loop, and the hosts must serve it from start to end. Each server is
registered in the demo's TAKO_HOME with the demo's client key and known_hosts, so the deploy reaches it
exactly as it would reach a real server, and installs and starts its agent through `ensure_agent`.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tako_core.config import Server, add_server
from tako_core.demo.processes import stop_agents
from tako_core.transport.inprocess import LocalSSHHost, known_hosts_line, write_host_key
from tako_core.transport.sshlib import asyncssh

T = TypeVar("T")
FIRST_ADDRESS = 11  # server i listens on 127.0.0.(10+i)
_PORT_TRIES = 50
_CALL_TIMEOUT = 15.0


class _LoopThread:
    """An event loop running on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tako-demo-ssh", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def _free_port(address: str, taken: set[int]) -> int:
    """A port free on `address` and not in `taken` (the demo's servers get distinct ports)."""
    for _ in range(_PORT_TRIES):
        with socket.socket() as sock:
            sock.bind((address, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError(f"no free port found on {address}")


class DemoFleet:
    """`count` servers named web-1, web-2, ...: start() brings them up, stop() ends them and their agents.

    Layout under `directory`: `home/` (TAKO_HOME: servers.toml, the client key, known_hosts),
    `hosts/<name>/` (host keys), `servers/<name>/` (each server's root).
    """

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self.home = directory / "home"
        self.servers: list[Server] = []
        self._hosts: list[LocalSSHHost] = []
        self._loop: _LoopThread | None = None

    def start(self) -> list[Server]:
        self.home.mkdir(parents=True, exist_ok=True)
        identity = self.home / "id_ed25519"
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(identity)
        identity.chmod(0o600)
        authorized_keys = self.home / "authorized_keys"
        authorized_keys.write_bytes(client_key.export_public_key())
        known_hosts = self.home / "known_hosts"

        self._loop = _LoopThread()
        lines: list[str] = []
        http_ports: set[int] = set()
        for index in range(1, self.count + 1):
            name = f"web-{index}"
            address = f"127.0.0.{FIRST_ADDRESS - 1 + index}"
            key_path = self.directory / "hosts" / name / "ssh_host_ed25519_key"
            host_key = write_host_key(key_path)
            host = LocalSSHHost(address, 0, host_key=key_path, authorized_keys=authorized_keys)
            self._loop.call(host.start())
            self._hosts.append(host)
            lines.append(known_hosts_line(address, host.port, host_key))
            http_port = _free_port(address, http_ports)
            https_port = _free_port(address, http_ports | {http_port})
            http_ports |= {http_port, https_port}
            root = self.directory / "servers" / name
            root.mkdir(parents=True)
            self.servers.append(
                Server(
                    name=name,
                    host=address,
                    port=host.port,
                    user=getpass.getuser(),
                    identity=identity,
                    known_hosts=known_hosts,
                    root=str(root),
                    http_port=http_port,
                    https_port=https_port,
                    http_host=address,
                )
            )
        known_hosts.write_text("".join(lines))
        for server in self.servers:
            add_server(server, home=self.home)
        return self.servers

    def stop(self) -> None:
        """Stop the agents (each stops its instances), then the SSH hosts and their loop."""
        stop_agents([Path(server.root) for server in self.servers])
        if self._loop is not None:
            for host in self._hosts:
                try:
                    self._loop.call(host.stop())
                except Exception:  # one host failing to stop must not keep the others up
                    continue
            self._loop.close()
            self._loop = None
        self._hosts.clear()
