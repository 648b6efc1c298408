"""`tako.toml`: load and validate the app's config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import located, parse, read_text
from .locate import KeyPath
from .model import AppConfig, EnvConfig
from .schema import (
    Invalid,
    check_keys,
    check_label_key,
    check_var_name,
    duration,
    expect_int,
    expect_label,
    expect_str,
    expect_table,
    optional_str,
    suggest,
    type_name,
    var_value,
    where,
)
from .tls import env_tls, tls_settings

TOP_KEYS = (
    "name",
    "preset",
    "build",
    "install",
    "install_inputs",
    "start",
    "release",
    "release_timeout",
    "health_path",
    "vars",
    "envs",
    "tls",
)
ENV_KEYS = ("route", "routes", "servers", "release", "instances", "tls")
PRESETS = ("python", "node", "bun")
DEFAULT_RELEASE_TIMEOUT = 600.0
MAX_INSTANCES = 64  # what the agent accepts
# tako sets these for every process it starts; a [vars] entry would silently lose or win.
RESERVED_VARS = ("PORT", "ENV")
RESERVED_PREFIX = "TAKO_"
# A host name as the router matches it (the Host header without its port); `*.` for every subdomain.
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.IGNORECASE)
_MOVE_TO_ENV = "move it into an [envs.<name>] table, e.g. [envs.production] then {key} = ..."
_COMMAND_HINT = 'a shell command as a string, e.g. start = "./server --port $PORT"'


def load_config(path: Path) -> AppConfig:
    """Read and validate a `tako.toml`. Anything wrong is a `ConfigError` pointing at file:line:column."""
    source = read_text(path, missing_hint="create one with `tako init`, or pass -c/--config FILE")
    data = parse(source, path).unwrap()
    try:
        return _app(data, path, source)
    except Invalid as err:
        raise located(err, path, source) from None


def _app(data: Mapping[str, Any], path: Path, source: str) -> AppConfig:
    for key in ("route", "routes", "servers", "instances"):
        if key in data:
            raise Invalid(
                (key,), f"'{key}' belongs to an environment, not the top level", _MOVE_TO_ENV.format(key=key)
            )
    check_keys(data, TOP_KEYS, ())
    if "name" not in data:
        raise Invalid(
            ("name",), "missing key 'name' at the top level", 'add name = "myapp" at the top of the file'
        )
    envs = _envs(data, path.parent)
    plain_vars, env_vars = _vars(data.get("vars", {}), envs)
    return AppConfig(
        path=path,
        name=expect_label(data["name"], ("name",), "app"),
        preset=_preset(data),
        build=_command(data, "build"),
        install=_command(data, "install"),
        start=_command(data, "start"),
        release=optional_str(data, "release", (), _COMMAND_HINT),
        release_timeout=duration(data["release_timeout"], ("release_timeout",))
        if "release_timeout" in data
        else DEFAULT_RELEASE_TIMEOUT,
        health_path=_health_path(data),
        vars=plain_vars,
        env_vars=env_vars,
        envs=envs,
        install_inputs=_install_inputs(data),
        tls=tls_settings(data, path.parent),
        source=source,
    )


def _command(data: Mapping[str, Any], key: str) -> str | None:
    """A shell command; blank counts as not set."""
    command = optional_str(data, key, (), _COMMAND_HINT)
    return command if command and command.strip() else None


def _install_inputs(data: Mapping[str, Any]) -> tuple[str, ...]:
    """Files (or globs) the install reads besides the well-known lockfiles, relative to the app's folder."""
    hint = 'a list of relative paths or globs, e.g. install_inputs = ["constraints.txt", "vendor/*.whl"]'
    value = data.get("install_inputs", [])
    if not isinstance(value, list):
        raise Invalid(
            ("install_inputs",),
            f"'install_inputs' must be an array of strings, not {type_name(value)}",
            hint,
            at_value=True,
        )
    inputs = []
    for i, item in enumerate(value):
        path = expect_str(item, ("install_inputs", i), hint)
        if not path.strip() or path.startswith("/") or ".." in path.split("/"):
            raise Invalid(
                ("install_inputs", i),
                f"install_inputs[{i}] = {path!r} is not a path inside the app",
                hint,
                at_value=True,
            )
        inputs.append(path)
    return tuple(inputs)


def _preset(data: Mapping[str, Any]) -> str | None:
    hint = f"preset is one of {', '.join(PRESETS)}, or leave it out"
    preset = optional_str(data, "preset", (), hint)
    if preset is not None and preset not in PRESETS:
        raise Invalid(
            ("preset",), f"unknown preset {preset!r}{suggest(preset, PRESETS)}", hint, at_value=True
        )
    return preset


def _health_path(data: Mapping[str, Any]) -> str:
    hint = 'an HTTP path starting with "/", e.g. health_path = "/healthz"'
    value = expect_str(data.get("health_path", "/"), ("health_path",), hint)
    if not value.startswith("/") or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise Invalid(("health_path",), f"invalid health_path {value!r}", hint, at_value=True)
    return value


def _envs(data: Mapping[str, Any], base: Path) -> dict[str, EnvConfig]:
    hint = 'add an environment: [envs.production] with servers = ["web-1"]'
    if "envs" not in data:
        raise Invalid(("envs",), "no environments: [envs.<name>] is missing", hint)
    table = expect_table(data["envs"], ("envs",), hint)
    if not table:
        raise Invalid(("envs",), "no environments: [envs] is empty", hint)
    envs: dict[str, EnvConfig] = {}
    for name, value in table.items():
        path = ("envs", name)
        check_label_key(name, path, "environment")
        envs[name] = _env(
            name, expect_table(value, path, f"write the environment as a table: [envs.{name}]"), path, base
        )
    return envs


def _env(name: str, table: Mapping[str, Any], path: KeyPath, base: Path) -> EnvConfig:
    if "vars" in table:
        raise Invalid(
            (*path, "vars"),
            f"variables of an environment go in [vars.{name}], not in [envs.{name}]",
            f"move them to a [vars.{name}] table",
        )
    check_keys(table, ENV_KEYS, path)
    instances_hint = f"instances is a whole number from 1 to {MAX_INSTANCES}"
    return EnvConfig(
        name=name,
        routes=_routes(table, path),
        servers=_servers(table, path),
        release=optional_str(table, "release", path, _COMMAND_HINT + ', or "" for none in this environment'),
        instances=expect_int(
            table.get("instances", 1), (*path, "instances"), 1, MAX_INSTANCES, instances_hint
        ),
        tls=env_tls(table, path, base),
    )


def _routes(table: Mapping[str, Any], path: KeyPath) -> tuple[str, ...]:
    hint = 'a host name, e.g. route = "example.com", or routes = ["example.com", "www.example.com"]'
    if "route" in table and "routes" in table:
        raise Invalid((*path, "routes"), "set either 'route' or 'routes', not both", "keep one of the two")
    if "route" in table:
        return (_host(table["route"], (*path, "route"), hint),)
    if "routes" not in table:
        return ()
    routes = _string_list(table["routes"], (*path, "routes"), hint)
    return tuple(_host(route, (*path, "routes", i), hint) for i, route in enumerate(routes))


def _host(value: object, path: KeyPath, hint: str) -> str:
    host = expect_str(value, path, hint)
    if "://" in host:
        raise Invalid(
            path, f"route {host!r} has a scheme", "write the host only, e.g. example.com", at_value=True
        )
    if not _HOST.fullmatch(host) or len(host) > 253:
        raise Invalid(path, f"invalid route {host!r}: not a host name", hint, at_value=True)
    return host.lower()


def _servers(table: Mapping[str, Any], path: KeyPath) -> tuple[str, ...]:
    hint = 'the servers of this environment, leader first, e.g. servers = ["web-1", "web-2"]'
    if "servers" not in table:
        raise Invalid((*path, "servers"), f"missing key 'servers' in {where((*path, 'servers'))}", hint)
    names = _string_list(table["servers"], (*path, "servers"), hint)
    if not names:
        raise Invalid((*path, "servers"), "'servers' is empty", hint, at_value=True)
    return tuple(expect_label(name, (*path, "servers", i), "server") for i, name in enumerate(names))


def _string_list(value: object, path: KeyPath, hint: str) -> list[str]:
    """An array of strings without duplicates; the duplicate itself is what an error points at."""
    if not isinstance(value, list):
        raise Invalid(
            path, f"'{path[-1]}' must be an array of strings, not {type_name(value)}", hint, at_value=True
        )
    seen: set[str] = set()
    for i, item in enumerate(value):
        text = expect_str(item, (*path, i), hint)
        if text in seen:
            raise Invalid(
                (*path, i), f"{text!r} is listed twice in '{path[-1]}'", "remove the duplicate", at_value=True
            )
        seen.add(text)
    return list(value)


def _vars(value: object, envs: Mapping[str, EnvConfig]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """`[vars]` holds variables for every env, and `[vars.<env>]` tables with an env's own values."""
    table = expect_table(value, ("vars",), 'write variables as a table: [vars] then KEY = "value" lines')
    plain: dict[str, str] = {}
    per_env: dict[str, dict[str, str]] = {name: {} for name in envs}
    for key, item in table.items():
        if isinstance(item, Mapping):
            if key not in envs:
                raise Invalid(
                    ("vars", key),
                    f"[vars.{key}] is for an environment that is not in [envs]{suggest(key, envs)}",
                    f"environments: {', '.join(envs)}",
                )
            per_env[key] = {
                _var_name(k, ("vars", key, k)): var_value(v, ("vars", key, k)) for k, v in item.items()
            }
        else:
            plain[_var_name(key, ("vars", key))] = var_value(item, ("vars", key))
    return plain, per_env


def _var_name(name: str, path: KeyPath) -> str:
    check_var_name(name, path)
    if name in RESERVED_VARS or name.startswith(RESERVED_PREFIX):
        raise Invalid(
            path,
            f"variable {name} is set by tako itself",
            f"tako sets {', '.join(RESERVED_VARS)} and {RESERVED_PREFIX}* itself; use another name",
        )
    return name
