"""Running the agent: one per root (a file lock), its router, its socket, its log, its pid file."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Listen:
    """Where the router listens, and whose forwarding headers it keeps."""

    host: str
    port: int
    trusted_proxies: tuple[str, ...] = ()


async def serve(
    layout: Layout,
    listen: Listen,
    ready: Callable[[], None] | None = None,
    client_user: str | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; `ready` is called once the socket accepts requests.
    `client_user` is the SSH user that drives an agent running as root (see Layout.create)."""
    layout.create(client_user)
    lock = lock_root(layout)
    try:
        router = Router(listen.host, listen.port, trusted_proxies=listen.trusted_proxies)
        await router.start()
        agent = Agent(layout, router)
        server = AgentServer(agent)
        try:
            await agent.restore()
            await server.start(layout.socket)
            layout.hand_socket(client_user)
            write_private(layout.pid_file, f"{os.getpid()}\n".encode())
            log.info(
                "agent %d serving on %s, router on %s:%d",
                os.getpid(),
                layout.socket,
                listen.host,
                router.port,
            )
            if ready:
                ready()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            log.info("agent %d stopping", os.getpid())
        finally:
            await server.close()
            await agent.shutdown()
            await router.stop()
            layout.socket.unlink(missing_ok=True)
            layout.pid_file.unlink(missing_ok=True)
    finally:
        os.close(lock)
