"""`tako init` and `tako config show`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tako_core.config import ResolvedEnv, default_env, init_config, load_config, load_inventory, resolve

from .options import config_option, env_option


@click.command("init")
@config_option
@click.option("--name", help="The app's name (default: from the folder's name).")
def init(config_path: Path, name: str | None) -> None:
    """Write a commented tako.toml for the project in this folder."""
    project = init_config(config_path, name)
    kind = f"a {project.preset} project" if project.preset else "no Python or Node project found: generic"
    click.echo(f"wrote {config_path} ({kind})", err=True)
    click.echo("next: check start/install, `tako servers add`, then `tako config show`", err=True)


@click.group("config")
def config() -> None:
    """Inspect the app's tako.toml."""


@config.command("show")
@config_option
@env_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(config_path: Path, env_name: str | None, as_json: bool) -> None:
    """Print the resolved config of an environment: servers, leader, release, vars."""
    app = load_config(config_path)
    resolved = resolve(app, env_name or default_env(app), load_inventory())
    click.echo(json.dumps(as_data(resolved), indent=2) if as_json else as_text(resolved))


def as_data(resolved: ResolvedEnv) -> dict[str, object]:
    return {
        "app": resolved.app,
        "env": resolved.env,
        "servers": [server.name for server in resolved.servers],
        "leader": resolved.leader.name,
        "release": resolved.release,
        "release_timeout": _number(resolved.release_timeout),
        "vars": resolved.vars,
    }


def as_text(resolved: ResolvedEnv) -> str:
    followers = [server.name for server in resolved.servers[1:]]
    rows = [
        ("app", resolved.app),
        ("env", resolved.env),
        ("config", str(resolved.config_path)),
        ("servers", ", ".join([f"{resolved.leader.name} (leader)", *followers])),
        ("routes", ", ".join(resolved.routes) or "(any host)"),
        ("instances", f"{resolved.instances} per server"),
        ("build", resolved.build or "-"),
        ("install", resolved.install or "-"),
        ("start", resolved.start or "-"),
        ("release", resolved.release if resolved.release is not None else "- (none)"),
        ("release_timeout", f"{_number(resolved.release_timeout)}s"),
        ("health_path", resolved.health_path),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label:<{width}}{value}" for label, value in rows]
    lines.append("vars" + ("" if resolved.vars else f"{' ' * (width - 4)}-"))
    lines += [f"  {key}={value}" for key, value in resolved.vars.items()]
    return "\n".join(lines)


def _number(seconds: float) -> int | float:
    return int(seconds) if seconds.is_integer() else seconds
