"""One SSH connection per server, reused for every step of a deploy.

Host keys are always verified (the server's known_hosts, else the user's own). Channels are capped
below OpenSSH's `MaxSessions` (10, and slots free late), a command whose connection died is an error
rather than a silent `exit_status=None`, and every asyncssh/socket failure becomes a TransportError
that names the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tako_core.config import Server
from tako_core.errors import TransportError
from tako_core.transport.agent_client import AgentClient
from tako_core.transport.failures import AgentNotRunning, connect_error, known_hosts_path, lost, where
from tako_core.transport.sshauth import client_factory
from tako_core.transport.sshlib import asyncssh, load

# Below OpenSSH's default MaxSessions of 10: with 10 at once an open fails now and then.
MAX_CHANNELS = 8
KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 3
# Waits before each reconnect attempt: about 8 s in all, then the server counts as gone.
RECONNECT_DELAYS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# Waits between attempts to open a session the server refused (about 2 s in all).
SESSION_RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

T = TypeVar("T")
LineHandler = Callable[[str], None]


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end on the server."""

    exit_status: int
    stdout: str
    stderr: str


class Connection:
    """An open SSH connection to one server. Safe to share between tasks; `close()` it, or open it
    with `async with Connection.open(server) as conn:`."""

    def __init__(self, server: Server, conn: asyncssh.SSHClientConnection, timeout: float) -> None:
        self.server = server
        self._conn = conn
        self._timeout = timeout
        self._slots = asyncio.Semaphore(MAX_CHANNELS)
        self._reconnecting = asyncio.Lock()

    @classmethod
    def open(cls, server: Server, *, timeout: float = 10) -> Opening:
        """Connect to `server`: `conn = await Connection.open(server)`, or
        `async with Connection.open(server) as conn:` to have it closed on the way out."""
        return Opening(cls._open(server, timeout))

    @classmethod
    async def _open(cls, server: Server, timeout: float) -> Connection:  # noqa: ASYNC109 (a connect timeout)
        await load()
        try:
            conn = await _connect(server, timeout)
        except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
            raise connect_error(server, exc) from exc
        return cls(server, conn, timeout)

    async def run(
        self,
        command: str,
        *,
        input: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the contract's signature)
        on_stdout: LineHandler | None = None,
        on_stderr: LineHandler | None = None,
    ) -> Completed:
        """Run `sh`-style `command`; `on_stdout`/`on_stderr` get each line (no newline) as it arrives."""
        label = _label(command)
        async with self._slots:
            try:
                async with asyncio.timeout(timeout):
                    with self._lost_while(f"starting `{label}`", asyncssh.ChannelOpenError):
                        process = await self._open_session(
                            lambda conn: conn.create_process(command, encoding=None)
                        )
                    return await _execute(process, input, on_stdout, on_stderr, self._lost_during(label))
            except TimeoutError as exc:
                if timeout is None:  # a socket timing out, not our limit
                    raise self._lost_during(label) from exc
                raise TransportError(
                    f"`{label}` on {where(self.server)} did not finish within {timeout:g} s",
                    hint="the command may still be running on the server; check it there",
                ) from None
            except (asyncssh.Error, OSError) as exc:
                raise self._lost_during(label) from exc

    async def start(self, command: str) -> asyncssh.SSHClientProcess[bytes]:
        """Start `command` and hand back its process (bytes streams) for a caller that talks to it
        while it runs. Its session is not one of the slots `run` shares: one such at a time."""
        with self._lost_while(f"starting `{_label(command)}`"):
            return await self._open_session(lambda conn: conn.create_process(command, encoding=None))

    async def agent(self, behind_hello: Callable[[AgentClient], None] | None = None) -> AgentClient:
        """A client for the tako agent, over a unix-socket channel to `<root>/run/tako.sock`
        (`behind_hello`: see AgentClient.connect)."""
        conn = await self._live()
        path = f"{self.server.root}/run/tako.sock"
        with self._lost_while("reaching the agent"):
            try:
                # Not counted against MaxSessions: a forwarded socket is not a session.
                reader, writer = await conn.open_unix_connection(path, encoding=None)
            except asyncssh.ChannelOpenError as exc:
                raise AgentNotRunning(
                    f"no tako agent answers on {where(self.server)} at {path}",
                    hint=f"install and start it with `tako servers setup {self.server.name}` (the "
                    "server's sshd must also allow it: AllowStreamLocalForwarding yes, the default)",
                ) from exc
        try:
            return await AgentClient.connect(reader, writer, behind_hello)
        except BaseException:
            writer.close()
            raise

    async def reconnect(self) -> None:
        """Replace the connection with a new one, retrying with backoff (about 8 s in all)."""
        async with self._reconnecting:
            await self._replace()

    async def close(self) -> None:
        self._conn.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self._conn.wait_closed(), 5)

    async def _open_session(self, start: Callable[[asyncssh.SSHClientConnection], Awaitable[T]]) -> T:
        """Open a session channel with `start`, retrying while the server refuses it.

        OpenSSH frees a session's MaxSessions slot a little after the client sees it close, so a
        burst of short commands is refused now and then even below the cap. Nothing ran yet, so
        trying again is safe.
        """
        for delay in SESSION_RETRY_DELAYS:
            conn = await self._live()
            try:
                return await start(conn)
            except asyncssh.ChannelOpenError:
                if conn.is_closed():
                    raise
                await asyncio.sleep(delay)
        return await start(await self._live())

    async def _live(self) -> asyncssh.SSHClientConnection:
        """The connection, re-established first when it died between two uses."""
        if self._conn.is_closed():
            async with self._reconnecting:
                if self._conn.is_closed():
                    await self._replace()
        return self._conn

    async def _replace(self) -> None:
        self._conn.abort()
        failure: BaseException | None = None
        for delay in RECONNECT_DELAYS:
            await asyncio.sleep(delay)
            try:
                self._conn = await _connect(self.server, self._timeout)
                return
            except (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied, asyncssh.KeyImportError) as exc:
                # another attempt cannot fix these
                raise connect_error(self.server, exc) from exc
            except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
                failure = exc
        assert failure is not None  # the loop ran at least once and never returned
        error = connect_error(self.server, failure)
        raise TransportError(
            f"{error.message} (gave up after {len(RECONNECT_DELAYS)} attempts)", hint=error.hint
        ) from failure

    @contextlib.contextmanager
    def _lost_while(
        self, doing: str, failures: type[Exception] | tuple[type[Exception], ...] | None = None
    ) -> Iterator[None]:
        """An asyncssh or socket failure (or one of `failures`) while `doing` becomes a TransportError
        that names the server."""
        caught = failures or (asyncssh.Error, OSError)
        try:
            yield
        except caught as exc:
            raise lost(self.server, exc, doing) from exc

    def _lost_during(self, label: str) -> TransportError:
        return TransportError(
            f"the SSH connection to {where(self.server)} was lost while running `{label}`",
            hint="the command may or may not have finished on the server; check there before retrying",
        )


class Opening:
    """What `Connection.open()` returns: awaitable (the connection) and an async context manager (the
    connection, closed on the way out), as asyncssh's own `connect` is."""

    def __init__(self, opening: Coroutine[Any, Any, Connection]) -> None:
        self._opening = opening
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._opening.__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._opening
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()


async def _connect(server: Server, limit: float) -> asyncssh.SSHClientConnection:
    known_hosts = known_hosts_path(server)
    if not known_hosts.is_file():
        raise FileNotFoundError(2, "No such file", str(known_hosts))
    options: dict[str, Any] = {
        "known_hosts": str(known_hosts),
        "connect_timeout": limit,
        "login_timeout": limit,
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        # asyncssh applies ~/.ssh/config silently: its `ForwardAgent yes` must not reach servers.
        "agent_forwarding": False,
    }
    if (factory := client_factory()) is not None:  # a login in one round trip, not three (sshauth)
        options["client_factory"] = factory
    if server.user:
        options["username"] = server.user
    if server.identity is not None:
        # Only the configured key is offered, not every key in the user's SSH agent.
        options["client_keys"] = [str(server.identity.expanduser())]
        options["agent_path"] = None
    return await asyncssh.connect(server.host, server.port, **options)


async def _execute(
    process: asyncssh.SSHClientProcess[bytes],
    input: bytes | None,
    on_stdout: LineHandler | None,
    on_stderr: LineHandler | None,
    lost_error: TransportError,
) -> Completed:
    try:
        if input:
            process.stdin.write(input)
        process.stdin.write_eof()
        stdout, stderr = await asyncio.gather(
            _read_lines(process.stdout, on_stdout), _read_lines(process.stderr, on_stderr)
        )
        await process.wait_closed()
    finally:
        process.close()
    # asyncssh reports a connection that died mid-command as exit_status None, not as an error.
    if process.exit_signal is not None:
        status = _signal_status(process.exit_signal[0])
    elif process.exit_status is None or process.exit_status < 0:
        raise lost_error
    else:
        status = process.exit_status
    return Completed(exit_status=status, stdout=stdout, stderr=stderr)


def _signal_status(name: str) -> int:
    """A command killed by a signal, as a shell reports it: 128 + the signal's number."""
    try:
        return 128 + signal.Signals[f"SIG{name}"].value
    except KeyError:
        return 255


async def _read_lines(stream: asyncssh.SSHReader[bytes], on_line: LineHandler | None) -> str:
    chunks: list[str] = []
    while line := await stream.readline():
        text = line.decode(errors="replace")
        chunks.append(text)
        if on_line is not None:
            on_line(text.rstrip("\r\n"))
    return "".join(chunks)


def _label(command: str) -> str:
    """A command as messages show it: its first line, shortened."""
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= 60 else first[:57] + "..."
