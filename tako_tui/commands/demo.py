"""`tako demo`: a local fleet of simulated servers, the sample app deployed to it, its URLs.

Nothing needed but Python: the servers are asyncssh SSH servers inside this process on 127.0.0.x,
each with its own root directory, agent and HTTP port. On a terminal the console shows the deploy;
once it is closed the URLs are printed and the servers keep serving until Ctrl-C. Without a terminal
(CI, tests) the demo prints the answers and cleans up (`--hold` keeps it up anyway).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

import click

from tako_core.demo import APP, ENV, FAILING_MIGRATION, MIGRATED_SCHEMA, Answer, Demo
from tako_core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from tako_tui.commands.frontend import on_terminal, run_job

MAX_HOLD = 8 * 3600.0  # a forgotten demo does not serve forever


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _catch_termination() -> None:
    """SIGTERM and a closed terminal end the demo like Ctrl-C: through its cleanup."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """The cleanup runs to its end: a second Ctrl-C must not leave half the servers running."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(text: str = "") -> None:
    click.echo(text, err=True)


def _show_answers(answers: list[Answer]) -> bool:
    width = max(len(a.server) for a in answers)
    leader = answers[0].server
    click.echo(
        f"\nThe app runs on {len(answers)} server(s). They share one SQLite database, migrated once "
        f"by the release command on {leader}."
    )
    first = answers[0].body
    click.echo()
    for answer in answers:
        same = answer is not answers[0] and answer.body == first
        status = f"answered {answer.status or 'nothing'}" + (", the same" if same else ":")
        click.echo(f"  {answer.server.ljust(width)}  {answer.url}  {status}")
        if not same:
            click.echo("".join(f"      {line}\n" for line in answer.body.splitlines()))
    return all(a.status == 200 and f"schema version {MIGRATED_SCHEMA}," in a.body for a in answers)


def _show_abort(demo: Demo) -> None:
    version = demo.schema_version()
    click.echo(
        f"\nThe release command failed on the leader (migration {FAILING_MIGRATION}, on purpose: "
        "--fail-release), so the deploy was aborted everywhere: no server started the new code, "
        "every partial release was removed."
    )
    click.echo(
        f"The shared database is unchanged: schema version {version or 0} (the migration rolled back)."
    )


def _hold(demo: Demo, answers: list[Answer]) -> None:
    """Keep the servers up, and only now invite a curl: they stay up while the person tries it."""
    click.echo("\nTry it yourself:")
    for answer in answers:
        click.echo(f"  curl {answer.url}")
    _say(f"\nServing until Ctrl-C (workspace {demo.workspace}).")
    with suppress(KeyboardInterrupt):
        time.sleep(MAX_HOLD)
    _say("\nStopping the servers ...")


@click.command("demo")
@click.option(
    "--servers",
    "count",
    type=click.IntRange(1, 9),
    default=3,
    show_default=True,
    help="How many simulated servers (the first is the leader).",
)
@click.option("--no-tui", is_flag=True, help="Print a plain transcript instead of the console.")
@click.option("--fail-release", is_flag=True, help="Make the migration fail to show the abort path (exit 1).")
@click.option(
    "--hold/--no-hold",
    default=None,
    help="Keep serving until Ctrl-C after the deploy (default: only on a terminal).",
)
def demo_command(count: int, no_tui: bool, fail_release: bool, hold: bool | None) -> None:
    """Deploy a sample app to a local fleet of simulated servers: needs nothing but Python.

    Starts the servers on 127.0.0.x (SSH inside this process, an agent and an HTTP port each), deploys
    an app whose release command migrates one SQLite database they all share, and prints each
    server's URL and answer. Everything it started is stopped and removed on exit.
    """
    hold = on_terminal() if hold is None else hold
    _catch_termination()
    demo = Demo(count, fail_release=fail_release)
    try:
        _say(f"Starting {count} simulated server(s) on 127.0.0.x (in-process SSH, an agent each) ...")
        demo.start()
        _say(f"Workspace: {demo.workspace}")
        code = run_job(demo.deploy, as_json=False, no_tui=no_tui, title=f"tako demo · {APP} → {ENV}")
        _catch_termination()  # the headless front end leaves SIGTERM at its default when done
        if code == EXIT_OK:
            answers = demo.answers()
            if not _show_answers(answers):
                _say("error: not every server answered with the migrated schema")
                code = EXIT_FAILED
            elif hold:
                _hold(demo, answers)
        elif fail_release and code == EXIT_FAILED:
            _show_abort(demo)
        elif code == EXIT_INTERRUPTED:
            _say("The deploy was aborted: stopping the servers.")
        if not hold:
            keep = (
                " (run it on a terminal, or with --hold, to keep the servers up)" if code == EXIT_OK else ""
            )
            _say(f"Cleaning up{keep}.")
    finally:
        with _uninterrupted():
            demo.close()
    sys.exit(code)
