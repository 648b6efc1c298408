"""Running the agent: one per root (a file lock), its router, its socket, its log, its pid file."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from tako_core.agent.certs import Certs
from tako_core.agent.layout import Layout, write_private
from tako_core.agent.router import Router
from tako_core.agent.server import AgentServer
from tako_core.agent.service import Agent

log = logging.getLogger("tako.agent")


class AgentAlreadyRunning(Exception):
    pass


def setup_logging(layout: Layout) -> None:
    layout.log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(layout.log_file)
    os.chmod(layout.log_file, 0o600)  # made so by the umask; older agents left it 0644
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("tako")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def lock_root(layout: Layout) -> int:
    """Hold ROOT/run/agent.lock for the agent's lifetime; a second agent on the same root stops here."""
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentAlreadyRunning(f"another agent is running on {layout.root}") from None
    return fd


# Restart in place: hand the router's sockets over, leave the instances running, exec the installed
# build. SIGWINCH because its default action is to ignore it: an agent too old to know it lives on.
RESTART_SIGNAL = signal.SIGWINCH
LISTEN_FIRST_FD = 3  # where inherited listening sockets start (systemd's convention, LISTEN_FDS)


def _both(*events: asyncio.Event) -> None:
    for e in events:
        e.set()


@dataclass(frozen=True)
class Listen:
    """Where the router listens, and whose forwarding headers it keeps."""

    host: str
    port: int
    trusted_proxies: tuple[str, ...] = ()
    https_port: int | None = None  # None: no HTTPS listener


async def serve(
    layout: Layout,
    listen: Listen,
    ready: Callable[[], None] | None = None,
    client_user: str | None = None,
) -> list[tuple[str, socket.socket]]:
    """Serve until SIGTERM or SIGINT (then stop every instance too) or RESTART_SIGNAL: then leave
    them running and return the router's listening sockets, for `restart_in_place`. `ready` is
    called once the socket accepts requests.
    `client_user` is the SSH user that drives an agent running as root (see Layout.create)."""
    layout.create(client_user)
    lock = lock_root(layout)
    try:
        certs = Certs(layout.tls)
        certs.load()
        router = Router(
            listen.host,
            listen.port,
            trusted_proxies=listen.trusted_proxies,
            listeners=_inherited(),
            https_port=listen.https_port,
            certs=certs,
        )
        agent = Agent(layout, router)
        server = AgentServer(agent)
        stop, leave = asyncio.Event(), asyncio.Event()
        try:
            await agent.restore()  # first: a handed-over router must not serve before its routes are back
            await router.start()
            agent.autocerts.restore()  # after the router: a leader's order needs its challenges served
            await server.start(layout.socket)
            layout.hand_socket(client_user)
            write_private(layout.pid_file, f"{os.getpid()}\n".encode())
            log.info(
                "agent %d serving on %s, router on %s:%d (https: %s)",
                os.getpid(),
                layout.socket,
                listen.host,
                router.port,
                router.https_port or "off",
            )
            if ready:
                ready()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(RESTART_SIGNAL, _both, leave, stop)
            await stop.wait()
            log.info(
                "agent %d %s",
                os.getpid(),
                "restarting, instances left running" if leave.is_set() else "stopping",
            )
        finally:
            # No new requests to the agent, then none to the router.
            layout.socket.unlink(missing_ok=True)
            await server.close()
            listeners = await router.hand_over() if leave.is_set() else []
            await agent.shutdown(leave=leave.is_set())
            await router.stop()
            if not leave.is_set():
                layout.pid_file.unlink(missing_ok=True)  # a restart in place keeps its pid
    finally:
        os.close(lock)
    return listeners


def _inherited() -> list[tuple[str, socket.socket]]:
    """Listening sockets this process inherited (from itself before `restart_in_place`), each with
    its kind from LISTEN_FDNAMES (an agent from before HTTPS names none: all were "http")."""
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "").split(":")
    if os.environ.pop("LISTEN_PID", "") != str(os.getpid()) or not count.isdigit():
        return []
    return [
        (names[n] if n < len(names) and names[n] else "http", socket.socket(fileno=LISTEN_FIRST_FD + n))
        for n in range(int(count))
    ]


def restart_in_place(listeners: list[tuple[str, socket.socket]], argv: list[str]) -> None:
    """Exec `argv` (the agent as installed now) as this same process, `listeners` inherited: the
    pid (systemd's main process, the pid file, the instances' parent) stays and no connection is
    refused while the new build starts (they wait in the sockets' backlog)."""
    logging.shutdown()  # before the dups: closing the log file must not close a socket's new fd
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for _, s in listeners]
    for n, fd in enumerate(high):
        os.dup2(fd, LISTEN_FIRST_FD + n)  # inheritable
    os.environ.update(
        LISTEN_FDS=str(len(high)),
        LISTEN_FDNAMES=":".join(kind for kind, _ in listeners),
        LISTEN_PID=str(os.getpid()),
    )
    os.execv(argv[0], argv)
