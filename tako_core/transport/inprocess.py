"""An SSH host inside this process: asyncssh's server with real exec, SFTP and unix-socket forwarding.

It stands in for OpenSSH where `sshd` is absent (the test fleet's fallback) and hosts the servers of
`tako demo`. Commands run as real `sh -c` subprocesses of this process, as the current user; the SFTP
subsystem sees the real filesystem. Exec pipes stdin/stdout/stderr by hand: asyncssh's
`process.redirect()` to subprocess streams was seen to lose stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from tako_core.transport.sshlib import asyncssh

# What a login through sshd gives a command: a fixed PATH plus who and where the user is.
_LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PIPE_CHUNK = 65536


def write_host_key(path: Path) -> asyncssh.SSHKey:
    """Create an ed25519 host key at `path` (0600, OpenSSH format) and return it."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key("openssh"))
    return key


def known_hosts_line(address: str, port: int, key: asyncssh.SSHKey) -> str:
    """The known_hosts line OpenSSH writes for `address:port` (bracketed form unless port 22)."""
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {key.export_public_key('openssh').decode().strip()}\n"


class _HostSession(asyncssh.SSHServer):
    """Per-connection policy: public-key auth only (any user name: commands run as this process's
    user), unix-socket forwarding allowed. Keeps `live` up to date for `drop_connections`."""

    def __init__(self, live: set[asyncssh.SSHServerConnection]) -> None:
        self._live = live
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._live.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._live.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def unix_connection_requested(self, dest_path: str) -> bool:
        return True


class LocalSSHHost:
    """One SSH server on `address:port` (port 0 picks a free one) with its own host key.

    `async with LocalSSHHost(...)` starts and stops it; `drop_connections()` cuts every client as a
    dying network would, leaving the listener up.
    """

    def __init__(
        self,
        address: str,
        port: int,
        *,
        host_key: Path,
        authorized_keys: Path,
        home: Path | None = None,
    ) -> None:
        self.address = address
        self._requested_port = port
        self._host_key = host_key
        self._authorized_keys = authorized_keys
        self._home = home or Path.home()
        self._server: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._commands: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalSSHHost is not started")
        return int(self._server.get_port())

    async def start(self) -> None:
        self._server = await asyncssh.create_server(
            lambda: _HostSession(self._connections),
            self.address,
            self._requested_port,
            server_host_keys=[str(self._host_key)],
            authorized_client_keys=str(self._authorized_keys),
            process_factory=self._run_process,
            sftp_factory=True,
            allow_scp=False,
            encoding=None,
        )
        # A restart after stop() comes back on the same port: clients have it in their inventory.
        self._requested_port = self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop_connections()
        for task in list(self._commands):
            task.cancel()
        if self._commands:
            await asyncio.wait(self._commands, timeout=5)

    @property
    def connections(self) -> int:
        """How many client connections are open."""
        return len(self._connections)

    def drop_connections(self) -> int:
        """Abort every client connection; returns how many there were."""
        dropped = list(self._connections)
        for conn in dropped:
            conn.abort()
        self._connections.clear()
        return len(dropped)

    async def __aenter__(self) -> LocalSSHHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _run_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.get_running_loop().create_task(self._exec(process))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _exec(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        if command is None:
            process.stderr.write(b"this host runs commands only, no interactive shell\n")
            process.exit(1)
            return
        env = {
            "PATH": _LOGIN_PATH,
            "HOME": str(self._home),
            "USER": os.environ.get("USER", "root"),
            "LOGNAME": os.environ.get("USER", "root"),
            "SHELL": "/bin/sh",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # A server simulated on this machine: its agent runs every app as this machine's user
            # rather than creating users here.
            "TAKO_APP_USERS": "0",
        }
        child = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self._home,
            env=env,
            start_new_session=True,
        )
        # Pipes were requested above, so the streams exist.
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        feed = asyncio.ensure_future(_feed_stdin(process.stdin, child.stdin))
        try:
            await asyncio.gather(
                _pump(child.stdout, process.stdout),
                _pump(child.stderr, process.stderr),
            )
            status = await child.wait()
        finally:
            feed.cancel()
            if child.returncode is None:
                # We are stopping: end the command and whatever it started (it leads its own
                # session), or `wait()` would block on pipes its children still hold.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                await child.wait()
        with contextlib.suppress(OSError, asyncssh.Error):
            if status < 0:
                process.exit_with_signal(_signal_name(-status))
            else:
                process.exit(status)


async def _feed_stdin(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_PIPE_CHUNK):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.close()


async def _pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    while data := await source.read(_PIPE_CHUNK):
        # A client that hung up stops reading; keep draining the child so it can exit.
        with contextlib.suppress(OSError, asyncssh.Error):
            sink.write(data)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return "KILL"
