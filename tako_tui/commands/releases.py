"""`tako status` and `tako releases [ls|rollback]`: what runs where, and going back to a kept release.

`tako releases` alone opens the releases screen on a terminal (and lists, like `ls`, elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
from click.core import ParameterSource

from tako_core.config import ResolvedEnv
from tako_core.deploy import DeployOptions, rollback
from tako_core.deploy.inspect import ServerView, auto_tls_line, certificate_line, inspect
from tako_core.events import DeployFinished, EventSink, Job, Prompter
from tako_core.secrets import load_env_secrets
from tako_core.units import ago
from tako_tui.commands.deploy import holder
from tako_tui.commands.frontend import on_terminal, run_job
from tako_tui.commands.options import app_url, config_option, env_option, load_target

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def _views(config_path: Path, env_name: str | None) -> list[ServerView]:
    return asyncio.run(inspect(load_target(config_path, env_name)))


@click.command("status")
@config_option
@env_option
@json_option
def status(config_path: Path, env_name: str | None, as_json: bool) -> None:
    """Per server: the current build, its instances and their health, and any deploy under way."""
    views = _views(config_path, env_name)
    if as_json:
        click.echo(json.dumps([asdict(v) for v in views], indent=2))
    else:
        for view in views:
            click.echo(_status_line(view))
    if any(v.error for v in views):
        sys.exit(1)


def _status_line(view: ServerView) -> str:
    if view.error:
        return f"{view.server}: unreachable: {view.error}"
    if view.status is None:
        return f"{view.server}: agent {view.agent_version}, never deployed"
    s = view.status
    up = sum(1 for i in s.instances if i.running)
    line = f"{view.server}: current {s.current or '-'}, {up}/{len(s.instances)} instances up"
    restarts = sum(i.restarts for i in s.instances)
    if restarts:
        line += f", {restarts} restarts"
    if s.lease is not None:
        since = ago(s.lease.started_at, time.time())
        line += f"; deploy of {s.lease.build} under way by {s.lease.holder} since {since}"
    if s.certificate is not None:
        line += f"\n  {certificate_line(s.certificate, time.time())}"
    if s.auto_tls is not None:
        line += f"\n  {auto_tls_line(s.auto_tls, time.time())}"
    return line


@click.group("releases", invoke_without_command=True)
@config_option
@env_option
@click.pass_context
def releases(ctx: click.Context, config_path: Path, env_name: str | None) -> None:
    """The releases each server keeps, and rolling back to one.

    Without a subcommand: on a terminal, the releases screen (status, kept releases, rollback after a
    confirmation); otherwise the same as `releases ls`.
    """
    if ctx.invoked_subcommand is not None:
        _hand_down(ctx, config_path=config_path, env_name=env_name)
        return
    if not on_terminal():
        ctx.invoke(releases_ls, config_path=config_path, env_name=env_name, as_json=False)
        return
    target = load_target(config_path, env_name)
    from tako_tui.app import ReleasesConsole  # Textual loads only when a screen is shown

    console = ReleasesConsole(
        lambda: inspect(target), rollback_job(target, confirmed=True), title=f"{target.app} → {target.env}"
    )
    finished = console.show()
    sys.exit(finished.exit_code if finished is not None else 0)


def _hand_down(ctx: click.Context, **given: object) -> None:
    """`tako releases -e staging ls` means `tako releases ls -e staging`: options the user gave the
    group become the subcommand's defaults (its own options still win)."""
    explicit = {
        name: value
        for name, value in given.items()
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    }
    if explicit and ctx.invoked_subcommand is not None:
        ctx.default_map = {ctx.invoked_subcommand: explicit}


def rollback_job(target: ResolvedEnv, *, confirmed: bool) -> Callable[[str], Job]:
    """The rollback to a build, as a job; `confirmed` (--yes, or asked on the releases screen): the
    core does not ask again.

    The secrets are read only once a rollback starts: looking at the releases needs no key."""

    def job_for(build: str) -> Job:
        async def job(sink: EventSink, prompter: Prompter) -> DeployFinished:
            secrets = await asyncio.to_thread(
                load_env_secrets, target.config_path.parent, target.app, target.env
            )
            options = DeployOptions(holder=holder(), confirmed=confirmed)
            return await rollback(
                target, build, secrets=secrets, sink=sink, prompter=prompter, options=options
            )

        return job

    return job_for


@releases.command("ls")
@config_option
@env_option
@json_option
def releases_ls(config_path: Path, env_name: str | None, as_json: bool) -> None:
    """The releases kept on each server, newest first; * marks current."""
    views = _views(config_path, env_name)
    if as_json:
        click.echo(json.dumps({v.server: [asdict(r) for r in v.releases] for v in views}, indent=2))
        return
    for view in views:
        click.echo(f"{view.server}:" + (f" unreachable: {view.error}" if view.error else ""))
        for r in sorted(view.releases, key=lambda r: r.created_at, reverse=True):
            mark = "*" if r.current else " "
            state = "" if r.complete else "  (incomplete)"
            click.echo(f"  {mark} {r.build}  {ago(r.created_at, time.time())}{state}")


@releases.command("rollback")
@click.argument("build")
@config_option
@env_option
@click.option("--no-tui", is_flag=True, help="Print a plain transcript on stderr.")
@json_option
@click.option("-y", "--yes", is_flag=True, help="Do not ask before rolling back production.")
def releases_rollback(
    build: str, config_path: Path, env_name: str | None, no_tui: bool, as_json: bool, yes: bool
) -> None:
    """Roll every server back to BUILD, a release it still keeps (the release command is not run)."""
    target = load_target(config_path, env_name)
    job = rollback_job(target, confirmed=yes)(build)
    title = f"{target.app} → {target.env} rollback"
    sys.exit(run_job(job, as_json=as_json, no_tui=no_tui, title=title, url=app_url(target)))
