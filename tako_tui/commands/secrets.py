"""`tako secrets`: set, get, ls, rm, and key export/import. Data on stdout, messages on stderr."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from tako_core.config import AppConfig, default_env, load_config
from tako_core.errors import BadInput
from tako_core.secrets import SecretsStore, check_name, key_env_var, new_exported_key
from tako_tui.commands.frontend import confirm
from tako_tui.commands.options import config_option, env_option


def _pick_env(config: AppConfig, env: str | None) -> str:
    """The env named by --env (it must be in tako.toml: a typo must not mint a new key), else the only one."""
    if env is None:
        return default_env(config)
    if env not in config.envs:
        raise BadInput(
            f"no environment {env!r} in {config.path}",
            hint=f"environments: {', '.join(config.envs)}; add [envs.{env}] to tako.toml to create it",
        )
    return env


def _open(config_path: Path) -> tuple[AppConfig, SecretsStore]:
    config = load_config(config_path)
    return config, SecretsStore.open(config.path.parent, config.name)


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _read_stdin(what: str) -> str:
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{what} read from stdin is not UTF-8 text") from None
    # One trailing newline is how `echo` and editors end a value; it is not part of it.
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


@click.group("secrets")
def secrets() -> None:
    """Encrypted secrets in .tako/secrets.json; keys in the OS keyring or TAKO_SECRETS_KEY_<ENV>."""


@secrets.command("set")
@click.argument("name")
@config_option
@env_option
def set_(name: str, config_path: Path, env_name: str | None) -> None:
    """Set secret NAME: typed at a hidden prompt, or read from stdin when stdin is not a terminal."""
    config, store = _open(config_path)
    env = _pick_env(config, env_name)
    check_name(name)  # a bad name or a missing key is reported before anyone types a value
    store.unlock(env)
    had_key = store.key_id(env) is not None
    if _stdin_is_terminal():
        value = click.prompt(f"Value for {name} ({env})", hide_input=True, confirmation_prompt=True, err=True)
    else:
        value = _read_stdin(f"the value of {name}")
    store.set(env, name, value)
    store.save()
    if "\n" in value or "\r" in value:
        click.echo(
            f"warning: the value of {name} spans lines; output masking hides each of its lines "
            "of 4 characters or more, shorter lines stay visible",
            err=True,
        )
    if value != value.strip():
        click.echo(
            f"warning: the value of {name} starts or ends with whitespace (kept as typed); "
            "set it again if that was not meant",
            err=True,
        )
    key_id = store.key_id(env)
    if not had_key:
        click.echo(
            f"created key {key_id} for env {env}; back it up with `tako secrets key export --env {env}`",
            err=True,
        )
    click.echo(f"set {name} in env {env}", err=True)


@secrets.command("get")
@click.argument("name")
@config_option
@env_option
def get(name: str, config_path: Path, env_name: str | None) -> None:
    """Print the decrypted value of secret NAME."""
    config, store = _open(config_path)
    click.echo(store.get(_pick_env(config, env_name), name))


@secrets.command("ls")
@config_option
@env_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def ls(config_path: Path, env_name: str | None, as_json: bool) -> None:
    """List secret names per env (values stay encrypted)."""
    config, store = _open(config_path)
    envs = [_pick_env(config, env_name)] if env_name is not None else sorted({*config.envs, *store.envs()})
    if as_json:
        doc = {"envs": {e: {"key_id": store.key_id(e), "names": store.names(e)} for e in envs}}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if env_name is not None:
        for name in store.names(env_name):
            click.echo(name)
        return
    for e in envs:
        key_id = store.key_id(e)
        click.echo(f"{e} (key {key_id})" if key_id else f"{e} (no secrets)")
        for name in store.names(e):
            click.echo(f"  {name}")


@secrets.command("rm")
@click.argument("name")
@config_option
@env_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rm(name: str, config_path: Path, env_name: str | None, yes: bool) -> None:
    """Remove secret NAME."""
    config, store = _open(config_path)
    env = _pick_env(config, env_name)
    store.remove(env, name)  # in memory until save(); raises when there is no such secret
    if not yes and not confirm(f"Remove {name} from env {env}?"):
        raise click.Abort
    store.save()
    click.echo(f"removed {name} from env {env}", err=True)


@secrets.group("key")
def key() -> None:
    """Move an env's key between machines (the keyring here, TAKO_SECRETS_KEY_<ENV> in CI)."""


@key.command("export")
@config_option
@env_option
def key_export(config_path: Path, env_name: str | None) -> None:
    """Print the env's key in the form TAKO_SECRETS_KEY_<ENV> and `key import` accept."""
    config, store = _open(config_path)
    env = _pick_env(config, env_name)
    exported = store.export_key(env)
    if sys.stdout.isatty():
        click.echo(f"the key of env {env}: whoever has it can read its secrets", err=True)
    click.echo(exported)


@key.command("new")
@config_option
@env_option
def key_new(config_path: Path, env_name: str | None) -> None:
    """Print `export TAKO_SECRETS_KEY_<ENV>=<a fresh key>`, for a machine without a keyring:
    `eval "$(tako secrets key new -e production)"`. For an env without secrets yet."""
    env = env_name or _pick_env(load_config(config_path), None)
    click.echo(f"export {key_env_var(env)}={shlex.quote(new_exported_key())}")
    if sys.stdout.isatty():
        click.echo("eval it in your shell, and keep the key somewhere safe (your CI's secrets)", err=True)


@key.command("import")
@config_option
@env_option
def key_import(config_path: Path, env_name: str | None) -> None:
    """Read a key from stdin, check it against every secret of the env, store it in the keyring."""
    config, store = _open(config_path)
    env = _pick_env(config, env_name)
    if _stdin_is_terminal():
        text = click.prompt(f"Key for env {env}", hide_input=True, err=True)
    else:
        text = _read_stdin("the key")
    key_id = store.import_key(env, text)
    click.echo(
        f"stored key {key_id} of env {env} in the keyring "
        f"({len(store.names(env))} secrets checked; {key_env_var(env)} still wins when set)",
        err=True,
    )


@secrets.command("edit")
@config_option
@env_option
def edit(config_path: Path, env_name: str | None) -> None:
    """Browse, reveal, add, change and delete secrets in a full-screen editor; `s` saves."""
    config, store = _open(config_path)
    envs = sorted({*config.envs, *store.envs()})
    if not envs:
        raise BadInput(f"no environments in {config.path}", hint="add an [envs.<name>] table to tako.toml")
    if not (_stdin_is_terminal() and sys.stdout.isatty()):
        raise BadInput("`tako secrets edit` needs a terminal", hint="scripts: `tako secrets set/get/ls/rm`")
    from tako_tui.app import SecretsConsole  # Textual loads only for the screen

    SecretsConsole(store, envs, _pick_env(config, env_name) if env_name is not None else None).show()
