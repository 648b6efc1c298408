"""`tako init` and `tako config show`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from tako_core.config import ResolvedEnv, default_env, init_config, load_config, load_inventory, resolve
from tako_core.errors import SecretsError
from tako_core.secrets import SecretsStore

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
    click.echo(
        "commit tako.toml and .tako/ (once it exists: the secrets file is encrypted, safe to commit); "
        "uncommitted files make every build id 'dirty'",
        err=True,
    )


@click.group("config")
def config() -> None:
    """Inspect the app's tako.toml."""


@config.command("show")
@config_option
@env_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(config_path: Path, env_name: str | None, as_json: bool) -> None:
    """Print the resolved config of an environment: servers, leader, release, vars, and the names of
    its secrets (never their values) with whether its secrets key is available here."""
    app = load_config(config_path)
    resolved = resolve(app, env_name or default_env(app), load_inventory())
    secrets = secrets_of(resolved)
    click.echo(json.dumps(as_data(resolved, secrets), indent=2) if as_json else as_text(resolved, secrets))


@dataclass(frozen=True)
class SecretsSummary:
    names: list[str]
    key_problem: str | None  # why the env's key is not available here; None when it is


def secrets_of(resolved: ResolvedEnv) -> SecretsSummary:
    try:
        store = SecretsStore.open(resolved.config_path.parent, resolved.app)
        names = store.names(resolved.env)
    except SecretsError as err:
        return SecretsSummary([], err.message)
    try:
        store.unlock(resolved.env)
    except SecretsError as err:
        return SecretsSummary(names, err.message)
    return SecretsSummary(names, None)


def as_data(resolved: ResolvedEnv, secrets: SecretsSummary) -> dict[str, object]:
    return {
        "app": resolved.app,
        "env": resolved.env,
        "servers": [server.name for server in resolved.servers],
        "leader": resolved.leader.name,
        "release": resolved.release,
        "release_timeout": _number(resolved.release_timeout),
        "vars": resolved.vars,
        "secrets": secrets.names,
        "secrets_key": secrets.key_problem is None,
        "tls": resolved.tls.describe,
    }


def as_text(resolved: ResolvedEnv, secrets: SecretsSummary) -> str:
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
        ("tls", resolved.tls.describe),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label:<{width}}{value}" for label, value in rows]
    lines.append("vars" + ("" if resolved.vars else f"{' ' * (width - 4)}-"))
    lines += [f"  {key}={value}" for key, value in resolved.vars.items()]
    key = "available" if secrets.key_problem is None else f"not available: {secrets.key_problem}"
    lines.append(f"{'secrets':<{width}}{', '.join(secrets.names) or '-'} (key {key})")
    return "\n".join(lines)


def _number(seconds: float) -> int | float:
    return int(seconds) if seconds.is_integer() else seconds
