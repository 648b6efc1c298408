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
from tako_core.deploy.logs import LogLine, ServerLog, labelled, read_logs, release_output
from tako_core.errors import BadInput, TakoError
from tako_core.units import ago, parse_span
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
@click.option(
    "--release",
    metavar="[BUILD]",
    is_flag=False,
    flag_value="",
    help="The release command's output instead: of BUILD's deploy (default: the latest).",
)
def logs_command(
    config_path: Path,
    env_name: str | None,
    server_names: tuple[str, ...],
    lines: int,
    follow: bool,
    since: str | None,
    as_json: bool,
    release: str | None,
) -> None:
    """The instances' output from every server of the env, in time order, secrets masked; or with
    --release, the output of a past deploy's release command."""
    target = load_target(config_path, env_name)
    servers = [ServerLog(s, target) for s in pick_servers(target, server_names)]
    if release is not None:
        _release_output(servers, release or None, as_json)
        return
    span = parse_span(since) if since is not None else 0.0
    if span is None:
        raise BadInput(f"--since {since!r} is not a time span", hint="write it like 90s, 10m, 2h or 1d")
    start = time.time() - span if span else 0.0
    several = target.instances > 1

    def show(line: LogLine) -> None:
        text = json.dumps(asdict(line)) if as_json else labelled(line, several)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    asyncio.run(read_logs(servers, lines=max(lines, 0), since=start, on_line=show, follow=follow))
    for s in servers:
        if s.error:
            click.echo(f"{s.server.name}: {s.error}", err=True)
    if any(s.error for s in servers):
        sys.exit(1)


def _release_output(servers: list[ServerLog], build: str | None, as_json: bool) -> None:
    found = asyncio.run(release_output(servers, build))
    for s in servers:
        if s.error:
            click.echo(f"{s.server.name}: {s.error}", err=True)
    if found is None:
        of = f"of build {build} " if build else ""
        raise TakoError(
            f"no server keeps a release command run {of}of this env",
            hint="a deploy without a release command has none; each server keeps the latest 20 runs",
        )
    run = found.run
    if as_json:
        click.echo(json.dumps({"server": found.server, **asdict(run), "lines": list(found.lines)}))
        return
    how = "still running" if run.running else f"exit {run.exit_code if run.exit_code is not None else '?'}"
    started = ago(run.started_at, time.time()) if run.started_at else "at an unknown time"
    click.echo(f"release command of {run.build or '?'} on {found.server}, {started}, {how}:", err=True)
    for line in found.lines:
        click.echo(f"{found.server} | {line}")
