"""`tako servers add|ls|rm`: the inventory in $TAKO_HOME/servers.toml. (`setup`/`status` attach elsewhere.)"""

from __future__ import annotations

import json
from pathlib import Path

import click

from tako_core.config import Server, add_server, inventory_path, load_inventory, remove_server


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
        "http_host": server.http_host,
    }


def _table(servers: list[Server]) -> str:
    header = ("NAME", "SSH", "ROOT", "HTTP", "IDENTITY")
    rows = [
        (
            server.name,
            f"{server.user + '@' if server.user else ''}{server.host}:{server.port}",
            server.root,
            f"{server.http_host}:{server.http_port}",
            str(server.identity) if server.identity else "-",
        )
        for server in servers
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
