"""`tako console` (and bare `tako` on a terminal in an app's folder): every env of the app in one
console over the core: status, logs, releases and rollback, secrets, deploy."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tako_core.config import ResolvedEnv, load_config, load_inventory, resolve
from tako_core.deploy import DeployOptions, deploy
from tako_core.deploy.inspect import ServerView, inspect
from tako_core.deploy.logs import LogLine, ServerLog, read_logs
from tako_core.errors import BadInput
from tako_core.events import DeployFinished, EventSink, Job, Prompter
from tako_core.secrets import SecretsStore, load_env_secrets
from tako_tui.commands.deploy import holder
from tako_tui.commands.frontend import on_terminal
from tako_tui.commands.options import config_option
from tako_tui.commands.releases import rollback_job

if TYPE_CHECKING:
    from tako_tui.app import ConsoleEnv

BACKLOG = 200  # lines of each env's logs shown when its logs view opens


@click.command("console")
@config_option
def console_command(config_path: Path) -> None:
    """The console: every env and server of the app, live; logs, releases, secrets, deploy (`?` for keys)."""
    if not on_terminal():
        raise BadInput(
            "the console needs a terminal", hint="for scripts: `tako status`, `tako logs`, `tako releases ls`"
        )
    from tako_tui.app import Console  # Textual loads only when a screen is shown

    config = load_config(config_path)
    inventory = load_inventory()
    envs = [console_env(resolve(config, env, inventory)) for env in config.envs]
    console = Console(config.name, envs, lambda: SecretsStore.open(config.path.parent, config.name))
    finished = console.show()
    sys.exit(finished.exit_code if finished is not None and not finished.ok else 0)


def console_env(target: ResolvedEnv) -> ConsoleEnv:
    from tako_tui.app import ConsoleEnv

    def load() -> Awaitable[list[ServerView]]:
        return inspect(target)

    async def follow(on_line: Callable[[LogLine], None]) -> None:
        servers = [ServerLog(s, target) for s in target.servers]
        await read_logs(servers, lines=BACKLOG, since=0.0, on_line=on_line, follow=True)

    return ConsoleEnv(
        name=target.env,
        servers=[s.name for s in target.servers],
        instances=target.instances,
        load=load,
        follow=follow,
        deploy=lambda: _deploy_job(target),
        rollback=rollback_job(target, confirmed=True),
    )


def _deploy_job(target: ResolvedEnv) -> Job:
    """A deploy the console has confirmed; its secrets are read when it starts."""

    async def job(sink: EventSink, prompter: Prompter) -> DeployFinished:
        secrets = await asyncio.to_thread(load_env_secrets, target.config_path.parent, target.app, target.env)
        options = DeployOptions(holder=holder(), confirmed=True)
        return await deploy(target, secrets=secrets, sink=sink, prompter=prompter, options=options)

    return job
