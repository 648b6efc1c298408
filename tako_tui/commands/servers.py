"""`tako servers`: the inventory in $TAKO_HOME/servers.toml (add, ls, rm) and the agent on each server
(setup, status; all servers in parallel)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import click

from tako_core.config import Server, add_server, inventory_path, load_inventory, remove_server
from tako_core.deploy.inspect import auto_tls_line, certificate_line
from tako_core.errors import BadInput, TakoError
from tako_core.transport import Connection
from tako_core.transport.agent_setup import agent_cache_dir, ensure_agent, inspect_agent
from tako_core.transport.agent_zipapp import build_zipapp
from tako_core.units import size

Say = Callable[[str], None]


@click.group("servers")
def servers() -> None:
    """The servers tako knows ($TAKO_HOME/servers.toml)."""


@servers.command("add")
@click.argument("name")
@click.option("--host", required=True, help="Address or host name to SSH to.")
@click.option("--port", type=int, default=22, show_default=True, help="SSH port.")
@click.option("--user", help="SSH user (default: your SSH config's).")
@click.option("--identity", help="Private key file.")
@click.option("--known-hosts", help="known_hosts file to verify the host key against.")
@click.option("--root", default="/opt/tako", show_default=True, help="tako's folder on the server.")
@click.option("--http-port", type=int, default=80, show_default=True, help="Port the agent's router serves.")
@click.option(
    "--https-port", type=int, default=443, show_default=True, help="Port the agent's router serves HTTPS on."
)
@click.option("--http-host", default="0.0.0.0", show_default=True, help="Address the agent's router binds.")
@click.option("--replace", is_flag=True, help="Overwrite a server of the same name.")
def add(
    name: str,
    host: str,
    port: int,
    user: str | None,
    identity: str | None,
    known_hosts: str | None,
    root: str,
    http_port: int,
    https_port: int,
    http_host: str,
    replace: bool,
) -> None:
    """Add a server to the inventory."""
    server = Server(
        name=name,
        host=host,
        port=port,
        user=user,
        identity=_local_path(identity),
        known_hosts=_local_path(known_hosts),
        root=root,
        http_port=http_port,
        https_port=https_port,
        http_host=http_host,
    )
    add_server(server, replace=replace)
    click.echo(f"saved server {name} in {inventory_path()}", err=True)


@servers.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def ls(as_json: bool) -> None:
    """List the servers."""
    inventory = load_inventory()
    if as_json:
        click.echo(json.dumps([_as_data(server) for server in inventory.servers.values()], indent=2))
    elif inventory.servers:
        click.echo(_table(list(inventory.servers.values())))
    else:
        click.echo(
            f"no servers in {inventory.path}; add one with `tako servers add NAME --host HOST`", err=True
        )


@servers.command("rm")
@click.argument("name")
def rm(name: str) -> None:
    """Remove a server from the inventory."""
    remove_server(name)
    click.echo(f"removed server {name} from {inventory_path()}", err=True)


@servers.command("setup")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--restart", is_flag=True, help="Restart the agent even when it is current (apps keep running)."
)
def setup(names: tuple[str, ...], restart: bool) -> None:
    """Install (or upgrade) and start the tako agent on the named servers."""
    _report(asyncio.run(_each(_select(names), functools.partial(_setup_one, restart=restart))), "setup")


@servers.command("status")
@click.argument("names", nargs=-1)
def status(names: tuple[str, ...]) -> None:
    """Show whether each server's agent answers and is current (all servers when none are named)."""
    _report(asyncio.run(_each(_select(names), _status_one)), "status")


async def _setup_one(server: Server, say: Say, *, restart: bool = False) -> bool:
    async with Connection.open(server) as conn:
        installed = False

        def step(message: str) -> None:
            nonlocal installed
            installed = True
            say(message)

        client = await ensure_agent(conn, on_step=step, restart=restart)
        try:
            what = "installed and answering" if installed else "already current"
            info = client.info
            described = _describe(info.hostname, info.python, info.http_parser)
            say(f"agent {info.agent_version} {what} ({described})")
        finally:
            await client.close()
    return True


async def _status_one(server: Server, say: Say) -> bool:
    build = (await asyncio.to_thread(build_zipapp, agent_cache_dir())).stem
    async with Connection.open(server) as conn:
        state = await inspect_agent(conn, build)
        if state.client is None:
            say(f"no agent answers: run `tako servers setup {server.name}`")
            return False
        info = state.client.info
        try:  # a stale agent may not speak this client's status: ask only a current one
            apps = await state.client.status() if state.current else []
        finally:
            await state.client.close()
    line = (
        f"agent {info.agent_version} (protocol {info.protocol}) up, "
        f"{_describe(info.hostname, info.python, info.http_parser)}, {size(info.free_bytes)} free"
    )
    if not state.current:
        say(f"{line}; stale: {state.reason}: run `tako servers setup {server.name}`")
        return False
    say(line)
    for app in apps:
        shared = " (the agent's own user: apps share it)" if app.shares_agent_user else ""
        say(f"  {app.app}/{app.env} runs as {app.user}{shared}")
        if app.certificate is not None:
            say(f"    {certificate_line(app.certificate, time.time())}")
        if app.auto_tls is not None:
            say(f"    {auto_tls_line(app.auto_tls, time.time())}")
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


def _describe(hostname: str, python: str, http_parser: str) -> str:
    parser = f", HTTP parser {http_parser}" if http_parser else ""  # "": an agent too old to say
    return f"host {hostname}, python {python}{parser}"


def _local_path(text: str | None) -> Path | None:
    """`~` stays (expanded when used); a relative path is made absolute, since later runs start elsewhere."""
    if text is None:
        return None
    path = Path(text)
    return path if path.is_absolute() or text.startswith("~") else Path.cwd() / path


def _as_data(server: Server) -> dict[str, object]:
    return {
        "name": server.name,
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "identity": str(server.identity) if server.identity else None,
        "known_hosts": str(server.known_hosts) if server.known_hosts else None,
        "root": server.root,
        "http_port": server.http_port,
        "https_port": server.https_port,
        "http_host": server.http_host,
    }


def _table(servers: list[Server]) -> str:
    header = ("NAME", "SSH", "ROOT", "HTTP", "HTTPS", "IDENTITY")
    rows = [
        (
            server.name,
            f"{server.user + '@' if server.user else ''}{server.host}:{server.port}",
            server.root,
            f"{server.http_host}:{server.http_port}",
            str(server.https_port),
            str(server.identity) if server.identity else "-",
        )
        for server in servers
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
