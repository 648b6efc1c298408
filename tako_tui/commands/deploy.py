"""`tako deploy`: the console on a terminal, a plain transcript or JSON lines otherwise."""

from __future__ import annotations

import getpass
import socket
import sys
from collections.abc import Awaitable
from pathlib import Path

import click

from tako_core.deploy import DeployOptions, deploy
from tako_core.events import DeployFinished, EventSink, Prompter
from tako_core.secrets import load_env_secrets
from tako_tui.commands.frontend import run_job
from tako_tui.commands.options import app_url, config_option, env_option, load_target


def holder() -> str:
    """Who deploys, as the lease shows it to anyone refused (the core makes it unique per deploy)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


@click.command("deploy")
@config_option
@env_option
@click.option(
    "--no-tui", is_flag=True, help="Print a plain transcript on stderr (the default without a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line on stdout.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before deploying to production.")
@click.option("--force-unlock", is_flag=True, help="Break a deploy lease left by a deploy that is gone.")
def deploy_command(
    config_path: Path, env_name: str | None, no_tui: bool, as_json: bool, yes: bool, force_unlock: bool
) -> None:
    """Build, ship, run the release command once on the leader, then roll every server over."""
    target = load_target(config_path, env_name)
    secrets = load_env_secrets(target.config_path.parent, target.app, target.env)
    options = DeployOptions(holder=holder(), force_unlock=force_unlock, confirmed=yes)

    def job(sink: EventSink, prompter: Prompter) -> Awaitable[DeployFinished]:
        return deploy(target, secrets=secrets, sink=sink, prompter=prompter, options=options)

    title = f"{target.app} → {target.env}"
    sys.exit(run_job(job, as_json=as_json, no_tui=no_tui, title=title, url=app_url(target)))
