"""One env of an app, ready to deploy: servers looked up in the inventory, release and vars merged."""

from __future__ import annotations

from tako_core.errors import BadInput

from .files import located
from .model import AppConfig, Inventory, ResolvedEnv, Server
from .schema import Invalid, suggest
from .tls import LETS_ENCRYPT, resolve_tls


def resolve_release(top: str | None, env: str | None) -> str | None:
    """The command the release gate runs, or None: no gate (as Tako's own resolver decides).

    An env's `release` wins over the top level; an env's empty or whitespace-only `release` clears the
    inherited command; a whitespace-only command at the top level is no command.
    """
    command = top if env is None else env
    return command if command is not None and command.strip() else None


def default_env(config: AppConfig) -> str:
    """The env to use when none was named: the only one, else none and a hint listing them."""
    if len(config.envs) == 1:
        return next(iter(config.envs))
    raise BadInput(
        f"{config.path} has {len(config.envs)} environments; which one?",
        hint=f"pass --env with one of: {', '.join(config.envs)}",
    )


def resolve(config: AppConfig, env: str, inventory: Inventory) -> ResolvedEnv:
    """The env named `env`; an unknown env or a server missing from the inventory is bad input."""
    if env not in config.envs:
        raise BadInput(
            f"no environment {env!r} in {config.path}{suggest(env, config.envs)}",
            hint=f"environments: {', '.join(config.envs)}",
        )
    env_config = config.envs[env]
    servers = tuple(_server(config, env, i, name, inventory) for i, name in enumerate(env_config.servers))
    public_ca = config.tls.acme_directory == LETS_ENCRYPT
    tls = resolve_tls(env_config.tls, env_config.routes, env, public_ca=public_ca)
    if isinstance(tls, Invalid):
        raise located(tls, config.path, config.source)
    return ResolvedEnv(
        app=config.name,
        env=env,
        config_path=config.path,
        servers=servers,
        leader=servers[0],
        release=resolve_release(config.release, env_config.release),
        release_timeout=config.release_timeout,
        vars={**config.vars, **config.env_vars.get(env, {})},
        build=config.build,
        install=config.install,
        install_inputs=config.install_inputs,
        start=config.start,
        health_path=config.health_path,
        routes=env_config.routes,
        instances=env_config.instances,
        tls=tls,
        tls_settings=config.tls,
    )


def _server(config: AppConfig, env: str, index: int, name: str, inventory: Inventory) -> Server:
    if name in inventory.servers:
        return inventory.servers[name]
    known = ", ".join(inventory.servers) or "none yet"
    invalid = Invalid(
        ("envs", env, "servers", index),
        f"server {name!r} is not in the inventory {inventory.path}{suggest(name, inventory.servers)}",
        f"add it with `tako servers add {name} --host HOST`; known servers: {known}",
        at_value=True,
    )
    raise located(invalid, config.path, config.source)
