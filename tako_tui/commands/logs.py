"""`tako logs`: the instances' output from every server of an env, in time order; `-f` follows it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from tako_core.config import ResolvedEnv, Server
from tako_core.deploy.logs import LogLine, ServerLog, read_logs
from tako_core.errors import BadInput
from tako_core.units import parse_span
from tako_tui.commands.options import config_option, env_option, load_target


def pick_servers(target: ResolvedEnv, names: tuple[str, ...]) -> list[Server]:
    """The env's servers named (all when none is); an unknown name is bad input."""
    known = {s.name: s for s in target.servers}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput(
            f"{', '.join(unknown)} is not a server of {target.env}",
            hint=f"the servers of {target.env} are {', '.join(known)}",
        )
    return [known[n] for n in names] if names else list(target.servers)


@click.command("logs")
@config_option
@env_option
@click.option(
    "--server", "server_names", metavar="NAME", multiple=True, help="Only this server (repeatable)."
)
@click.option("-n", "--lines", default=100, show_default=True, help="How many of the newest lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are written.")
@click.option("--since", metavar="SPAN", help="Only lines from the last SPAN: 90s, 10m, 2h, 1d.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout.")
def logs_command(
    config_path: Path,
    env_name: str | None,
    server_names: tuple[str, ...],
    lines: int,
    follow: bool,
    since: str | None,
    as_json: bool,
) -> None:
    """The instances' output from every server of the env, in time order, secrets masked."""
    target = load_target(config_path, env_name)
    servers = [ServerLog(s, target) for s in pick_servers(target, server_names)]
    span = parse_span(since) if since is not None else 0.0
    if span is None:
        raise BadInput(f"--since {since!r} is not a time span", hint="write it like 90s, 10m, 2h or 1d")
    start = time.time() - span if span else 0.0
    several = target.instances > 1

    def show(line: LogLine) -> None:
        if as_json:
            text = json.dumps(asdict(line))
        else:
            who = f"{line.server}#{line.instance}" if several and line.instance is not None else line.server
            text = f"{who} | {line.line}"
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    asyncio.run(read_logs(servers, lines=max(lines, 0), since=start, on_line=show, follow=follow))
    for s in servers:
        if s.error:
            click.echo(f"{s.server.name}: {s.error}", err=True)
    if any(s.error for s in servers):
        sys.exit(1)
