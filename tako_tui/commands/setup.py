"""`tako servers setup` and `tako servers status`: the agent on each server, all servers in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import click

from tako_core.config import Server, load_inventory
from tako_core.errors import BadInput, TakoError
from tako_core.transport import Connection
from tako_core.transport.agent_setup import agent_cache_dir, ensure_agent, inspect_agent
from tako_core.transport.agent_zipapp import build_zipapp

Say = Callable[[str], None]


@click.command("setup")
@click.argument("names", nargs=-1, required=True)
def setup(names: tuple[str, ...]) -> None:
    """Install (or upgrade) and start the tako agent on the named servers."""
    servers = _select(names)
    _report(asyncio.run(_each(servers, _setup_one)), "setup")


@click.command("status")
@click.argument("names", nargs=-1)
def status(names: tuple[str, ...]) -> None:
    """Show whether each server's agent answers and is current (all servers when none are named)."""
    servers = _select(names)
    _report(asyncio.run(_each(servers, _status_one)), "status")


async def _setup_one(server: Server, say: Say) -> bool:
    async with await Connection.open(server) as conn:
        installed = False

        def step(message: str) -> None:
            nonlocal installed
            installed = True
            say(message)

        client = await ensure_agent(conn, on_step=step)
        try:
            what = "installed and answering" if installed else "already current"
            info = client.info
            say(f"agent {info.agent_version} {what} ({_describe(info.hostname, info.python)})")
        finally:
            await client.close()
    return True


async def _status_one(server: Server, say: Say) -> bool:
    build = (await asyncio.to_thread(build_zipapp, agent_cache_dir())).stem
    async with await Connection.open(server) as conn:
        state = await inspect_agent(conn, build)
    if state.client is None:
        say(f"no agent answers: run `tako servers setup {server.name}`")
        return False
    info = state.client.info
    await state.client.close()
    line = (
        f"agent {info.agent_version} (protocol {info.protocol}) up, "
        f"{_describe(info.hostname, info.python)}, {info.free_bytes / 1e9:.1f} GB free"
    )
    if not state.current:
        say(f"{line}; stale: {state.reason}: run `tako servers setup {server.name}`")
        return False
    say(line)
    return True


async def _each(servers: Sequence[Server], job: Callable[[Server, Say], Awaitable[bool]]) -> list[str]:
    """Run `job` on every server at once; each line it says is printed with the server's name."""
    width = max(len(s.name) for s in servers)

    def sayer(name: str) -> Say:
        return lambda message: click.echo(f"{name:<{width}}  {message}", err=True)

    async def guarded(server: Server) -> str | None:
        say = sayer(server.name)
        try:
            return None if await job(server, say) else server.name
        except TakoError as err:
            say(f"failed: {err.message}")
            if err.hint:
                say(f"  hint: {err.hint}")
            return server.name

    failed = await asyncio.gather(*(guarded(s) for s in servers))
    return [name for name in failed if name is not None]


def _report(failed: list[str], what: str) -> None:
    if failed:
        raise TakoError(f"{what}: {len(failed)} server(s) not ready: {', '.join(failed)}")


def _select(names: Sequence[str]) -> list[Server]:
    inventory = load_inventory()
    if not names:
        if not inventory.servers:
            raise BadInput(
                f"no servers in {inventory.path}", hint="add one with `tako servers add NAME --host H`"
            )
        return list(inventory.servers.values())
    unknown = [name for name in names if name not in inventory.servers]
    if unknown:
        raise BadInput(
            f"unknown server(s): {', '.join(unknown)}",
            hint=f"`tako servers ls` lists the servers in {inventory.path}",
        )
    return [inventory.servers[name] for name in dict.fromkeys(names)]


def _describe(hostname: str, python: str) -> str:
    return f"host {hostname}, python {python}"
