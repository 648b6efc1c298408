"""Options every command shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tako_core.config import ResolvedEnv, default_env, load_config, load_inventory, resolve

F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    """`-c/--config FILE`: the app's tako.toml (default: ./tako.toml)."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=Path("tako.toml"),
        show_default=True,
        help="The app's tako.toml.",
    )(func)


def env_option(func: F) -> F:
    """`-e/--env ENV`: the environment a command acts on, spelled the same in every command."""
    return click.option(
        "-e",
        "--env",
        "env_name",
        metavar="ENV",
        help="The environment (default: the only one in tako.toml).",
    )(func)


def app_url(target: ResolvedEnv) -> str | None:
    """Where the app answers once deployed: its first route on the leader's HTTP port."""
    if not target.routes:
        return None
    port = target.leader.http_port
    return f"http://{target.routes[0]}" + ("" if port == 80 else f":{port}") + "/"


def load_target(config_path: Path, env: str | None) -> ResolvedEnv:
    """The env a command acts on: tako.toml + the inventory; the env defaults to the only one."""
    config = load_config(config_path)
    return resolve(config, env or default_env(config), load_inventory())
