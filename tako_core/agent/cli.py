"""The agent's command line: `serve --root R --http-host H --http-port P [--https-port P]
[--trusted-proxy A]... [--client-user U] [--detach]`, `version` and `bridge SOCKET [--wait S]`.

This is a process entry point on the server, so unlike the rest of tako_core it writes to stdout
and stderr.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tako_core

if TYPE_CHECKING:
    from tako_core.agent.daemon import Listen
    from tako_core.agent.layout import Layout

DETACH_TIMEOUT = 20.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tako-agent", description="tako's runtime on a server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the agent")
    serve.add_argument("--root", required=True, type=Path, help="the agent's root directory")
    serve.add_argument("--http-host", default="0.0.0.0", help="address the HTTP router binds")
    serve.add_argument("--http-port", type=int, default=80, help="port the HTTP router binds")
    # 443 when not given: an agent set up before HTTPS existed runs without the flag, and its
    # command line must stay the same for an upgrade to restart it in place.
    serve.add_argument("--https-port", type=int, default=443, help="port the HTTPS router binds (0: none)")
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a proxy whose forwarding headers the router keeps (repeatable)",
    )
    serve.add_argument(
        "--client-user", help="the SSH user that drives this agent when it runs as root (via sudo)"
    )
    serve.add_argument("--detach", action="store_true", help="daemonize; exit 0 once the socket answers")
    commands.add_parser("version", help="print '<agent version> <protocol version>'")
    bridge = commands.add_parser("bridge", help="join stdin and stdout to the agent's control socket")
    bridge.add_argument("socket", help="the agent's control socket")
    bridge.add_argument("--wait", type=float, default=30.0, help="seconds to wait for it to answer")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Each command imports what it needs: `bridge` starts in every install, on its critical path.
    if args.command == "bridge":
        from tako_core.agent.bridge import bridge

        return bridge(args.socket, args.wait)
    if args.command == "version":
        from tako_core.agent.contract import PROTOCOL_VERSION

        sys.stdout.write(f"{tako_core.__version__} {PROTOCOL_VERSION}\n")
        return 0
    from tako_core.agent.layout import Layout

    # An agent running as root runs each app/env as its own user, unless TAKO_APP_USERS=0 (a server
    # simulated on one's own machine: the demo, some tests) keeps them all as the agent's user.
    app_users = os.geteuid() == 0 and os.environ.get("TAKO_APP_USERS") != "0"
    layout = Layout(args.root.absolute(), app_users=app_users)
    # Last on the path: a python3 with its own httptools keeps it; one without finds the wheel that
    # setup unpacked for it (a C extension cannot load from the zipapp). A wheel for another Python
    # has no module file this one looks for, so the router falls back to h11.
    sys.path.append(str(layout.lib))
    from tako_core.agent.daemon import Listen

    listen = Listen(args.http_host, args.http_port, tuple(args.trusted_proxy), args.https_port or None)
    if args.detach:
        return _detach(layout, listen, args.client_user)
    return _serve(layout, listen, args.client_user, None)


def _serve(layout: Layout, listen: Listen, client_user: str | None, ready_fd: int | None) -> int:
    # Imported here so `version` works even where serving could not (e.g. a missing module).
    import asyncio

    from tako_core.agent.daemon import restart_in_place, serve, setup_logging

    os.umask(0o077)  # state, logs and the socket are the agent's own unless opened up on purpose
    setup_logging(layout)

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

    try:
        listeners = asyncio.run(serve(layout, listen, ready, client_user))
        if listeners:  # restarting in place, already detached when it was asked to
            restart_in_place(listeners, [sys.executable, *(a for a in sys.orig_argv[1:] if a != "--detach")])
    except Exception as e:
        message = f"tako-agent: {type(e).__name__}: {e}\n"
        if ready_fd is not None:
            os.write(ready_fd, message.encode())
        else:
            sys.stderr.write(message)
        return 1
    return 0


def _detach(layout: Layout, listen: Listen, client_user: str | None) -> int:
    """Double-fork into a session of its own; the parent waits for the daemon's word on a pipe."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # intermediate: new session, fork the daemon, leave
        os.close(read_fd)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os._exit(_serve(layout, listen, client_user, write_fd))
    os.close(write_fd)
    os.waitpid(child, 0)
    answer = b""
    deadline = time.monotonic() + DETACH_TIMEOUT
    while time.monotonic() < deadline and not answer.endswith(b"\n"):
        readable, _, _ = select.select([read_fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(read_fd, 4096) if readable else b""
        if not chunk:
            break
        answer += chunk
    os.close(read_fd)
    if answer == b"ok\n":
        return 0
    sys.stderr.write(answer.decode(errors="replace") or "tako-agent: the agent did not start in time\n")
    return 1
