"""`tako tls renew`: the env's automatic certificate, ordered again now."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from tako_core.config.tls import AUTO
from tako_core.deploy.autotls import renew
from tako_core.errors import BadInput
from tako_tui.commands.options import config_option, env_option, load_target


@click.group("tls")
def tls() -> None:
    """HTTPS certificates: `tls renew` orders the env's automatic certificate now."""


@tls.command("renew")
@config_option
@env_option
def tls_renew(config_path: Path, env_name: str | None) -> None:
    """The env's leader orders a new certificate now; every other server then fetches it.

    Returns once every server serves the new certificate (or says why one does not)."""
    target = load_target(config_path, env_name)
    if target.tls.mode != AUTO:
        raise BadInput(
            f"env {target.env} gets no automatic certificate (tls is {target.tls.describe})",
            hint='tls = "auto" needs routes that are DNS names; a brought certificate is renewed by '
            "bringing a new one and deploying",
        )
    results = asyncio.run(renew(target))
    serials = {r.serial for _, r in results if not isinstance(r, str)}
    for server, result in results:
        if isinstance(result, str):
            click.echo(f"{server}: failed: {result}")
        else:
            expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(result.not_after))
            click.echo(
                f"{server}: {', '.join(result.names)} from {result.issuer}, expires {expires} UTC"
                f" (serial {result.serial})"
            )
    if any(isinstance(r, str) for _, r in results) or len(serials) > 1:
        sys.exit(1)
