"""`tako run -- COMMAND...`: a command run once on a server, as the app's instances run there.

On a terminal the command gets a PTY (line editing, Ctrl-C to the remote process, the window's size):
this terminal goes raw and passes every key through. Otherwise its output streams, masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import termios
import tty
from pathlib import Path

import click

from tako_core.deploy.oneoff import OneOff
from tako_tui.commands.logs import pick_servers
from tako_tui.commands.options import config_option, env_option, load_target


@click.command("run", context_settings={"allow_interspersed_args": False})
@config_option
@env_option
@click.option("--server", "server_name", metavar="NAME", help="Run it there (default: the leader).")
@click.option("--force", is_flag=True, help="Run it even while a deploy holds the lease.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(
    config_path: Path, env_name: str | None, server_name: str | None, force: bool, command: tuple[str, ...]
) -> None:
    """Run COMMAND once, in the current release, with the environment an instance gets.

    One argument is a shell command (`tako run -- 'echo $DATABASE_URL | wc -c'`); several are one
    program and its arguments, quoted as they are (`tako run -- python manage.py shell`). On a
    terminal it gets one of its own (line editing, Ctrl-C, the window's size). Its exit code is tako's.
    """
    target = load_target(config_path, env_name)
    server = pick_servers(target, (server_name,))[0] if server_name else target.leader
    # Several arguments are one program: exec'd, so no shell stands between it and its signals (a
    # shell that saw the PTY's Ctrl-C would die of it once the program exits, whatever its code).
    text = command[0] if len(command) == 1 else "exec " + shlex.join(command)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()

    async def main() -> int:
        size = os.get_terminal_size(sys.stdout.fileno()) if interactive else None
        oneoff = OneOff(server, target, text, size=(size.lines, size.columns) if size else None, force=force)
        if not interactive:
            return await oneoff.run(_write)
        return await _at_the_terminal(oneoff)

    sys.exit(asyncio.run(main()))


def _write(data: str) -> None:
    sys.stdout.write(data)
    sys.stdout.flush()


async def _at_the_terminal(oneoff: OneOff) -> int:
    """Run it with this terminal raw: keys and window changes go to the remote PTY, in order."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    inbox: asyncio.Queue[bytes | os.terminal_size] = asyncio.Queue()

    async def forward() -> None:
        while True:
            item = await inbox.get()
            if isinstance(item, bytes):
                await oneoff.send(item)
            else:
                await oneoff.resize(item.lines, item.columns)

    def typed() -> None:
        data = os.read(fd, 4096)
        if data:
            inbox.put_nowait(data)
        else:
            loop.remove_reader(fd)  # the terminal is gone; the command runs on until it ends

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    loop.add_reader(fd, typed)
    loop.add_signal_handler(signal.SIGWINCH, lambda: inbox.put_nowait(os.get_terminal_size(fd)))
    sender = asyncio.ensure_future(forward())
    try:
        return await oneoff.run(_write)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        loop.remove_signal_handler(signal.SIGWINCH)
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
