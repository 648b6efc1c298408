"""Running a deploy-shaped job (deploy, rollback) under the right front end.

On a terminal: the Textual console. Otherwise, or with --no-tui: the plain transcript on stderr.
With --json: one JSON event per line on stdout. The job's exit code becomes the command's.
Outside the console, the core's questions (and the commands' own) are asked by `confirm`, the one
place that refuses to go on without a terminal to ask on.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from tako_core.errors import EXIT_INTERRUPTED, BadInput
from tako_core.events import DeployFinished, Event, EventSink, Job
from tako_core.report import PlainTranscript, json_line


def on_terminal() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm(question: str) -> bool:
    """Ask on the terminal (stderr); without one, refuse rather than guess: bad input, exit 2."""
    if not on_terminal():
        raise BadInput(
            f"refusing to go on without confirmation, and there is no terminal to ask on: {question}",
            hint="pass --yes to confirm up front (as CI should)",
        )
    return click.confirm(question, default=False, err=True)


class TerminalPrompter:
    """The core's `Prompter` outside the console: asks on the terminal, off the event loop."""

    async def confirm(self, question: str) -> bool:
        return await asyncio.to_thread(confirm, question)


def run_job(job: Job, *, as_json: bool, no_tui: bool, title: str, url: str | None = None) -> int:
    """Run `job` under the front end the flags and the terminal ask for; returns the exit code. Once
    the console has closed, its verdict stays on the terminal in a line (with `url` when it worked)."""
    finished: DeployFinished | None
    if as_json:
        finished = _run_headless(job, _json_sink)
    elif no_tui or not on_terminal():
        finished = _run_headless(job, _transcript_sink())
    else:
        from tako_tui.app import DeployConsole  # Textual loads only when a screen is shown

        console = DeployConsole(job, title=title)
        finished = console.show()
        click.echo(console.deploy_screen.model.one_line(url), err=True)
    return finished.exit_code if finished is not None else EXIT_INTERRUPTED


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


def _run_headless(job: Job, sink: EventSink) -> DeployFinished:
    """Run the job on a fresh loop; SIGINT and SIGTERM cancel it, which the core turns into an abort."""

    async def main() -> DeployFinished:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await job(sink, TerminalPrompter())
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
