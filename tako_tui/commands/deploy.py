"""`tako deploy`: the console on a terminal, a plain transcript or JSON lines otherwise."""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from tako_core.config import ResolvedEnv
from tako_core.deploy import DeployOptions, deploy, needs_confirmation
from tako_core.errors import BadInput
from tako_core.events import DeployFinished, Event, EventSink
from tako_core.report import PlainTranscript, json_line
from tako_core.secrets import load_env_secrets
from tako_tui.commands.options import config_option, load_target


class TerminalPrompter:
    """Asks on the terminal (stderr), off the event loop."""

    async def confirm(self, question: str) -> bool:
        return await asyncio.to_thread(click.confirm, question, default=False, err=True)


def holder() -> str:
    """Who holds the deploy lease: readable for the person refused, unique to this one deploy."""
    return f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})"


@click.command("deploy")
@config_option
@click.option("-e", "--env", "env_name", help="The environment to deploy (default: the only one).")
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
    on_terminal = sys.stdin.isatty() and sys.stderr.isatty()
    if needs_confirmation(target, options) and not on_terminal:
        raise BadInput(
            f"deploying to {target.env} asks for confirmation, and there is no terminal to ask on",
            hint="pass --yes to confirm up front (as CI should)",
        )

    def run(sink: EventSink) -> Awaitable[DeployFinished]:
        return deploy(target, secrets=secrets, sink=sink, prompter=TerminalPrompter(), options=options)

    finished: DeployFinished | None
    if as_json:
        finished = _run_headless(run, _json_sink)
    elif no_tui or not on_terminal:
        finished = _run_headless(run, _transcript_sink())
    else:
        finished = _run_console(target, run)
    sys.exit(finished.exit_code if finished is not None else 130)


def _json_sink(event: Event) -> None:
    sys.stdout.write(json_line(event) + "\n")
    sys.stdout.flush()


def _transcript_sink() -> EventSink:
    transcript = PlainTranscript()

    def sink(event: Event) -> None:
        for line in transcript.lines(event):
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return sink


def _run_headless(run: Callable[[EventSink], Awaitable[DeployFinished]], sink: EventSink) -> DeployFinished:
    """Run the deploy on a fresh loop; SIGINT and SIGTERM cancel it, which the core turns into an abort."""

    async def main() -> DeployFinished:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await run(sink)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


def _run_console(
    target: ResolvedEnv, run: Callable[[EventSink], Awaitable[DeployFinished]]
) -> DeployFinished | None:
    from tako_tui.app import run_deploy_console  # Textual loads only when a screen is shown

    return run_deploy_console(run, title=f"{target.app} → {target.env}")
