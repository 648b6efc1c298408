"""The `tako` command: parses arguments, calls the core, renders errors. Textual loads only for screens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tako_core import __version__
from tako_core.errors import EXIT_INTERRUPTED, TakoError
from tako_tui.commands.config import config, init
from tako_tui.commands.console import console_command
from tako_tui.commands.demo import demo_command
from tako_tui.commands.deploy import deploy_command
from tako_tui.commands.frontend import on_terminal
from tako_tui.commands.logs import logs_command
from tako_tui.commands.releases import releases
from tako_tui.commands.releases import status as app_status
from tako_tui.commands.run import run_command
from tako_tui.commands.secrets import secrets
from tako_tui.commands.servers import servers


class TakoGroup(click.Group):
    """The one place where an error becomes a message and an exit code: never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TakoError as err:
            click.echo(err.render(), err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(
    cls=TakoGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="tako")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Deploy apps to your own Linux servers: one artifact, a release command run once, zero downtime.

    Without a command: the console on a terminal in an app's folder (one with tako.toml), this help
    otherwise."""
    if ctx.invoked_subcommand is None:
        if on_terminal() and Path("tako.toml").is_file():
            ctx.invoke(console_command, config_path=Path("tako.toml"))
        else:
            click.echo(ctx.get_help())


main.add_command(init)
main.add_command(config)
main.add_command(servers)
main.add_command(secrets)
main.add_command(deploy_command)
main.add_command(releases)
main.add_command(app_status)
main.add_command(logs_command)
main.add_command(run_command)
main.add_command(console_command)
main.add_command(demo_command)


def run() -> None:
    main(prog_name="tako")


if __name__ == "__main__":
    run()
