"""The `tako` command: parses arguments, calls the core, renders errors.

Start-up is kept short: a command's module (and with it asyncssh, cryptography, the core's deploy
machinery; Textual only for screens) is imported only when that command runs or shows its help, and
the process ends with `os._exit` once its output is flushed, skipping the interpreter's teardown.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from tako_core import __version__
from tako_core.errors import EXIT_INTERRUPTED, TakoError

# Every command: name -> (module in tako_tui.commands, attribute, one-line help for `tako --help`).
# Registering a command is one line here; tests/test_cli_lazy.py holds each line to the real command.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("config", "init", "Write a commented tako.toml for the project in this folder."),
    "config": ("config", "config", "Inspect the app's tako.toml."),
    "servers": ("servers", "servers", "The servers tako knows ($TAKO_HOME/servers.toml)."),
    "secrets": (
        "secrets",
        "secrets",
        "Encrypted secrets in .tako/secrets.json; keys in the OS keyring or TAKO_SECRETS_KEY_<ENV>.",
    ),
    "deploy": (
        "deploy",
        "deploy_command",
        "Build, ship, run the release command once on the leader, then roll every server over.",
    ),
    "releases": ("releases", "releases", "The releases each server keeps, and rolling back to one."),
    "status": (
        "releases",
        "status",
        "Per server: the current build, its instances and their health, and any deploy under way.",
    ),
    "logs": (
        "logs",
        "logs_command",
        "The instances' output from every server of the env, in time order, secrets masked; or with"
        " --release, the output of a past deploy's release command.",
    ),
    "run": (
        "run",
        "run_command",
        "Run COMMAND once, in the current release, with the environment an instance gets.",
    ),
    "tls": (
        "tls",
        "tls",
        "HTTPS certificates: `tls renew` orders the env's automatic certificate now.",
    ),
    "console": (
        "console",
        "console_command",
        "The console: every env and server of the app, live; logs, releases, secrets, deploy (`?` for keys).",
    ),
    "demo": (
        "demo",
        "demo_command",
        "Deploy a sample app to a local fleet of simulated servers: needs nothing but Python.",
    ),
}


class TakoGroup(click.Group):
    """Loads commands from COMMANDS on demand, and is the one place where an error becomes a message and
    an exit code: never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attribute, _ = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(f"tako_tui.commands.{module}"), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but the help comes from COMMANDS so that `tako --help` imports no command."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name][2])
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
        from tako_tui.commands.frontend import on_terminal  # only without a command: start-up stays light

        console = main.get_command(ctx, "console")
        if on_terminal() and Path("tako.toml").is_file() and console is not None:
            ctx.invoke(console, config_path=Path("tako.toml"))
        else:
            click.echo(ctx.get_help())


def invoke(args: list[str] | None = None) -> int:
    """Run the command line (sys.argv by default) and return its exit code."""
    try:
        main(args, prog_name="tako")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        click.echo(done.code, err=True)
        return 1
    return 0


def exit_now(code: int) -> NoReturn:
    """End the process once stdout and stderr are flushed, without the interpreter's teardown of every
    module (0.07-0.24 s after a deploy). Only for the command line: the library never does this."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            code = code or 1
    os._exit(code)


def run() -> NoReturn:
    exit_now(invoke())


if __name__ == "__main__":
    run()
