"""The server inventory, `$TAKO_HOME/servers.toml`: one `[servers.<name>]` table per server.

Edits go through tomlkit on the user's own document, so their comments and layout survive.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import platformdirs
import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table
from tomlkit.toml_document import TOMLDocument

from tako_core.errors import BadInput, ConfigError

from .edit import cut_section
from .files import located, parse, read_text, write_atomic
from .locate import KeyPath
from .model import Inventory, Server
from .schema import (
    Invalid,
    check_keys,
    check_label_key,
    expect_int,
    expect_str,
    expect_table,
    suggest,
    type_name,
)

SERVER_KEYS = (
    "host",
    "port",
    "user",
    "identity",
    "known_hosts",
    "root",
    "http_port",
    "https_port",
    "http_host",
    "trusted_proxies",
)
_DEFAULTS = Server(name="-", host="-")
_HEADER = """\
# tako's servers: one [servers.<name>] table per server.
# Edit by hand or with `tako servers add|rm`; comments are kept.
"""


def tako_home() -> Path:
    """`$TAKO_HOME`, else the platform's user config folder for tako."""
    home = os.environ.get("TAKO_HOME", "").strip()
    return Path(home).expanduser() if home else Path(platformdirs.user_config_dir("tako"))


def inventory_path(home: Path | None = None) -> Path:
    return (home if home is not None else tako_home()) / "servers.toml"


def load_inventory(home: Path | None = None) -> Inventory:
    """The inventory; a missing file is an empty inventory, a broken one a `ConfigError`."""
    path = inventory_path(home)
    if not path.exists():
        return Inventory(servers={}, path=path)
    return Inventory(servers=_read(path)[1], path=path)


def add_server(server: Server, home: Path | None = None, *, replace: bool = False) -> None:
    """Add `server`; an existing name is refused unless `replace`, which edits its table in place."""
    path = inventory_path(home)
    doc, servers = _read(path) if path.exists() else (tomlkit.parse(_HEADER), {})
    if server.name in servers and not replace:
        raise BadInput(
            f"server {server.name!r} already exists in {path}",
            hint="pick another name, or pass --replace to overwrite it",
        )
    written = check_server(server, path.parent)
    if "servers" not in doc:
        doc.append("servers", tomlkit.table(is_super_table=True))
    parent = doc["servers"]
    if isinstance(parent, InlineTable):
        raise BadInput(
            f"{path} writes 'servers' as an inline table, which tako cannot add a table to",
            hint="rewrite it as one [servers.<name>] table per server",
        )
    assert isinstance(parent, MutableMapping)  # _read checked that it is a table
    table = parent.get(server.name)
    if not isinstance(table, Table):
        parent.pop(server.name, None)  # an inline table being replaced
        table = tomlkit.table()
    for key, value in _fields(server).items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    parent[server.name] = table
    _write_checked(path, doc.as_string(), {**servers, server.name: written})


def remove_server(name: str, home: Path | None = None) -> None:
    path = inventory_path(home)
    doc, servers = _read(path) if path.exists() else (tomlkit.document(), {})
    if name not in servers:
        raise BadInput(
            f"no server {name!r} in {path}{suggest(name, servers)}",
            hint=f"known servers: {', '.join(servers) or 'none'} (see `tako servers ls`)",
        )
    remaining = {key: server for key, server in servers.items() if key != name}
    text = cut_section(doc.as_string(), ("servers", name))
    if text is None or _servers_in(text, path.parent) != remaining:
        # Not a plain [servers.<name>] section: let tomlkit remove it (it may take a neighbour's comment).
        parent = doc["servers"]
        assert isinstance(parent, MutableMapping)  # _read checked that it is a table
        del parent[name]
        text = doc.as_string()
    _write_checked(path, text, remaining)


def _write_checked(path: Path, text: str, expected: dict[str, Server]) -> None:
    """Write `text` only if it holds exactly the `expected` servers: an edit never breaks the file."""
    if _servers_in(text, path.parent) != expected:
        raise ConfigError(
            "tako cannot make this change without disturbing the rest of the file",
            path=path,
            hint="make the change by hand (see `tako servers add --help` for the keys)",
        )
    write_atomic(path, text)


def _servers_in(text: str, base: Path) -> dict[str, Server] | None:
    """The servers `text` holds, or None when it is not a valid inventory."""
    try:
        return _servers(tomlkit.parse(text).unwrap(), base)
    except (TOMLKitError, Invalid):
        return None


def check_server(server: Server, base: Path) -> Server:
    """`server` as the file will hold it, checked against the same rules; `BadInput` names the flag."""
    fields = {key: value for key, value in _fields(server).items() if value is not None}
    try:
        return server_from_table(server.name, fields, ("servers", server.name), base)
    except Invalid as err:
        flag = "NAME" if len(err.path) == 2 else f"--{str(err.path[-1]).replace('_', '-')}"
        raise BadInput(f"{flag}: {err.message}", hint=err.hint) from None


def server_from_table(name: str, table: Mapping[str, Any], path: KeyPath, base: Path) -> Server:
    """One `[servers.<name>]` table; relative paths in it are relative to the folder `base`."""
    check_label_key(name, path, "server")
    check_keys(table, SERVER_KEYS, path)
    if "host" not in table:
        raise Invalid((*path, "host"), f"missing key 'host' in [servers.{name}]", 'add host = "203.0.113.10"')
    port_hint = "a TCP port from 1 to 65535"
    return Server(
        name=name,
        host=_word(table["host"], (*path, "host"), "the server's address or host name"),
        port=expect_int(table.get("port", _DEFAULTS.port), (*path, "port"), 1, 65535, port_hint),
        user=_word(table["user"], (*path, "user"), "the SSH user name") if "user" in table else None,
        identity=_file(table, "identity", path, base),
        known_hosts=_file(table, "known_hosts", path, base),
        root=_root(table.get("root", _DEFAULTS.root), (*path, "root")),
        http_port=expect_int(
            table.get("http_port", _DEFAULTS.http_port), (*path, "http_port"), 1, 65535, port_hint
        ),
        https_port=expect_int(
            table.get("https_port", _DEFAULTS.https_port), (*path, "https_port"), 1, 65535, port_hint
        ),
        http_host=_word(
            table.get("http_host", _DEFAULTS.http_host), (*path, "http_host"), "an address, e.g. 0.0.0.0"
        ),
        trusted_proxies=_addresses(table.get("trusted_proxies", []), (*path, "trusted_proxies")),
    )


def _read(path: Path) -> tuple[TOMLDocument, dict[str, Server]]:
    source = read_text(path, missing_hint="add a server with `tako servers add`")
    doc = parse(source, path)
    try:
        return doc, _servers(doc.unwrap(), path.parent)
    except Invalid as err:
        raise located(err, path, source) from None


def _servers(data: Mapping[str, Any], base: Path) -> dict[str, Server]:
    check_keys(data, ("servers",), ())
    hint = 'one table per server: [servers.web-1] then host = "..."'
    servers = expect_table(data.get("servers", {}), ("servers",), hint)
    return {
        name: server_from_table(name, expect_table(table, ("servers", name), hint), ("servers", name), base)
        for name, table in servers.items()
    }


def _fields(server: Server) -> dict[str, str | int | list[str] | None]:
    """What the file holds for `server`: the host and every value that differs from the default."""
    fields: dict[str, str | int | list[str] | None] = {"host": server.host}
    for key in SERVER_KEYS[1:]:
        value = getattr(server, key)
        if value == getattr(_DEFAULTS, key):
            fields[key] = None
        else:
            fields[key] = (
                str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
            )
    return fields


def _addresses(value: object, path: KeyPath) -> tuple[str, ...]:
    """IP addresses, e.g. of a TLS terminator in front of the router."""
    hint = 'IP addresses of proxies in front of the router, e.g. trusted_proxies = ["127.0.0.1"]'
    if not isinstance(value, list):
        raise Invalid(
            path, f"'{path[-1]}' must be an array of addresses, not {type_name(value)}", hint, at_value=True
        )
    for i, item in enumerate(value):
        text = expect_str(item, (*path, i), hint)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise Invalid((*path, i), f"{text!r} is not an IP address", hint, at_value=True) from None
    return tuple(value)


def _word(value: object, path: KeyPath, hint: str) -> str:
    text = expect_str(value, path, hint)
    if not text or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise Invalid(path, f"invalid {path[-1]} {text!r}", hint, at_value=True)
    return text


def _root(value: object, path: KeyPath) -> str:
    hint = 'an absolute folder on the server, e.g. root = "/opt/tako"'
    root = _word(value, path, hint)
    if not root.startswith("/"):
        raise Invalid(path, f"root {root!r} is not an absolute path", hint, at_value=True)
    return root


def _file(table: Mapping[str, Any], key: str, path: KeyPath, base: Path) -> Path | None:
    """A local file path; `~` is kept (expanded when used), a relative path is relative to `base`."""
    if key not in table:
        return None
    text = expect_str(table[key], (*path, key), "a path to a local file, e.g. ~/.ssh/id_ed25519")
    if not text.strip():
        raise Invalid((*path, key), f"'{key}' is empty", "give a path, or leave the key out", at_value=True)
    file = Path(text)
    return file if file.is_absolute() or text.startswith("~") else base / file
