"""The server inventory: load, validate at file:line:col, edit atomically keeping comments."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tako_core.config import Server, add_server, inventory_path, load_inventory, remove_server, tako_home
from tako_core.errors import BadInput, ConfigError
from tako_core.transport.agent_setup import _serve_args, systemd_unit

COMMENTED = """\
# my servers
[servers.web-1]   # the leader
host = "203.0.113.10"  # public address
port = 2222
user = "deploy"

[servers.web-2]
host = "203.0.113.11"
"""


def test_tako_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAKO_HOME", str(tmp_path))
    assert tako_home() == tmp_path
    assert inventory_path() == tmp_path / "servers.toml"
    monkeypatch.setenv("TAKO_HOME", "")
    assert tako_home().name == "tako"  # the platform's user config folder
    monkeypatch.delenv("TAKO_HOME")
    assert tako_home().name == "tako"


def test_missing_file_is_an_empty_inventory(tmp_path: Path) -> None:
    inventory = load_inventory(tmp_path)
    assert inventory.servers == {}
    assert inventory.path == tmp_path / "servers.toml"


def test_load_with_defaults_and_paths(tmp_path: Path) -> None:
    (tmp_path / "servers.toml").write_text(
        COMMENTED + 'identity = "~/.ssh/id_ed25519"\nknown_hosts = "keys/known_hosts"\n'
        'root = "/srv/tako"\nhttp_port = 8080\nhttp_host = "127.0.0.5"\n'
    )
    servers = load_inventory(tmp_path).servers
    assert list(servers) == ["web-1", "web-2"]
    assert servers["web-1"] == Server(name="web-1", host="203.0.113.10", port=2222, user="deploy")
    assert servers["web-2"] == Server(
        name="web-2",
        host="203.0.113.11",
        identity=Path("~/.ssh/id_ed25519"),  # kept: expanded by whoever opens it
        known_hosts=tmp_path / "keys/known_hosts",  # relative to the inventory's folder
        root="/srv/tako",
        http_port=8080,
        http_host="127.0.0.5",
    )


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        (
            '[servers.a]\nhost = "h"\nprot = 22\n',
            3,
            1,
            "unknown key 'prot' in [servers.a]; did you mean 'port'?",
        ),
        ('[servers.a]\nhost = "h"\nport = "22"\n', 3, 8, "'port' must be an integer, not a string"),
        ('[servers.a]\nhost = "h"\nport = 0\n', 3, 8, "between 1 and 65535"),
        ('[servers.a]\nhost = "h"\nhttp_port = 70000\n', 3, 13, "between 1 and 65535"),
        ("[servers.a]\nport = 22\n", 1, 10, "missing key 'host' in [servers.a]"),
        ('[servers.a]\nhost = ""\n', 2, 8, "invalid host ''"),
        ('[servers.a]\nhost = "h"\nroot = "opt/tako"\n', 3, 8, "not an absolute path"),
        ('[servers.a]\nhost = "h"\nidentity = ""\n', 3, 12, "'identity' is empty"),
        ('[servers.Web_1]\nhost = "h"\n', 1, 10, "invalid server name 'Web_1'"),
        ('[server.a]\nhost = "h"\n', 1, 2, "unknown key 'server' in the top level; did you mean 'servers'?"),
        ("servers = 1\n", 1, 11, "'servers' must be a table"),
        ('[servers]\na = "h"\n', 2, 5, "'a' must be a table, not a string"),
        ('[servers.a]\nhost = "h"\n[servers.a]\n', 3, 2, "TOML syntax error"),
    ],
)
def test_broken_inventory(tmp_path: Path, text: str, line: int, column: int, words: str) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_inventory(tmp_path)
    assert words in caught.value.message
    assert (caught.value.path, caught.value.line, caught.value.column) == (path, line, column)
    assert caught.value.hint


def test_add_to_a_new_file_round_trips(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"  # created on first write
    server = Server(
        name="s1",
        host="127.0.0.2",
        port=2200,
        user="me",
        identity=tmp_path / "id",
        known_hosts=Path("~/kh"),
        root="/tmp/root",
        http_port=8000,
        http_host="127.0.0.2",
    )
    add_server(server, home)
    add_server(Server(name="s2", host="h2"), home)
    assert load_inventory(home).servers == {"s1": server, "s2": Server(name="s2", host="h2")}
    text = (home / "servers.toml").read_text()
    assert text.startswith("# tako's servers")
    assert '[servers.s2]\nhost = "h2"\n' in text  # defaults are not written out
    assert os.listdir(home) == ["servers.toml"]  # no temp file left behind


def test_add_keeps_comments_and_refuses_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(COMMENTED)
    path.chmod(0o600)
    add_server(Server(name="web-3", host="203.0.113.12"), tmp_path)
    assert path.read_text() == COMMENTED + '\n[servers.web-3]\nhost = "203.0.113.12"\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the user's permissions are kept
    with pytest.raises(BadInput, match="already exists") as caught:
        add_server(Server(name="web-1", host="x"), tmp_path)
    assert caught.value.hint is not None
    assert "--replace" in caught.value.hint
    assert load_inventory(tmp_path).servers["web-1"].host == "203.0.113.10"


def test_replace_edits_the_table_in_place(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(COMMENTED)
    add_server(Server(name="web-1", host="203.0.113.99", http_port=81), tmp_path, replace=True)
    text = path.read_text()
    assert "# my servers\n[servers.web-1]   # the leader\n" in text
    assert 'host = "203.0.113.99"  # public address\n' in text
    assert "port = 2222" not in text
    assert "user" not in text
    assert load_inventory(tmp_path).servers["web-1"] == Server(
        name="web-1", host="203.0.113.99", http_port=81
    )


def test_replace_an_inline_table_and_refuse_an_inline_servers_table(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text('[servers]\na = { host = "h" }\n')
    add_server(Server(name="a", host="h2"), tmp_path, replace=True)
    assert load_inventory(tmp_path).servers["a"].host == "h2"
    path.write_text('servers = { a = { host = "h" } }\n')
    with pytest.raises(BadInput, match="inline table"):
        add_server(Server(name="b", host="h"), tmp_path)


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(COMMENTED)
    remove_server("web-2", tmp_path)
    assert path.read_text() == COMMENTED.split("\n[servers.web-2]")[0]
    assert list(load_inventory(tmp_path).servers) == ["web-1"]
    with pytest.raises(BadInput, match=r"no server 'web-2' in .*; did you mean 'web-1'") as caught:
        remove_server("web-2", tmp_path)
    assert caught.value.exit_code == 2


NEIGHBOURS = """\
# my servers

# the leader
[servers.a]
host = "a"  # inline
# about a, still

# b is the spare
[servers.b]
host = "b"
# c is new
[servers.c]
host = "c"

# end of file
"""


@pytest.mark.parametrize(
    ("name", "removed_lines"),
    [
        ("a", [3, 4, 5, 6, 7]),  # its own comments go, "# b is the spare" stays
        ("b", [8, 9, 10]),  # "# c is new" stays with c
        ("c", [11, 12, 13]),  # the closing comment of the file stays
    ],
)
def test_remove_keeps_the_neighbours_comments(tmp_path: Path, name: str, removed_lines: list[int]) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(NEIGHBOURS)
    remove_server(name, tmp_path)
    lines = NEIGHBOURS.splitlines(keepends=True)
    assert path.read_text() == "".join(
        line for number, line in enumerate(lines, 1) if number not in removed_lines
    )


@pytest.mark.parametrize(
    "text",
    [
        'servers.a.host = "a"\nservers.b.host = "b"\n',  # dotted keys
        '[servers]\na = { host = "a" }\nb = { host = "b" }\n',  # inline tables
        '[servers.b]\nhost = "b"\nidentity = """\n# not a comment"""\n[servers.a]\nhost = "a"\n',
    ],
)
def test_remove_other_forms(tmp_path: Path, text: str) -> None:
    (tmp_path / "servers.toml").write_text(text)
    remove_server("a", tmp_path)
    assert list(load_inventory(tmp_path).servers) == ["b"]


def test_remove_from_an_empty_inventory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no server 'x'"):
        remove_server("x", tmp_path)


def test_a_broken_file_is_never_edited(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text("[servers.a]\nhost = 1\n")
    with pytest.raises(ConfigError):
        add_server(Server(name="b", host="h"), tmp_path)
    with pytest.raises(ConfigError):
        remove_server("a", tmp_path)
    assert path.read_text() == "[servers.a]\nhost = 1\n"


@pytest.mark.parametrize(
    ("server", "words"),
    [
        (Server(name="Bad Name", host="h"), "NAME: invalid server name"),
        (Server(name="a", host="two words"), "--host: invalid host"),
        (Server(name="a", host="h", port=0), "--port: 'port' must be between 1 and 65535"),
        (Server(name="a", host="h", root="relative"), "--root: root 'relative' is not an absolute path"),
        (Server(name="a", host="h", http_host=""), "--http-host: invalid http_host"),
    ],
)
def test_add_checks_the_server_like_the_file(tmp_path: Path, server: Server, words: str) -> None:
    with pytest.raises(BadInput) as caught:
        add_server(server, tmp_path)
    assert not isinstance(caught.value, ConfigError)
    assert words in caught.value.message
    assert not (tmp_path / "servers.toml").exists()


def test_unwritable_home_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        add_server(Server(name="a", host="h"), blocker / "home")


def test_trusted_proxies_are_addresses_and_reach_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text('[servers.a]\nhost = "h"\ntrusted_proxies = ["127.0.0.1", "::1"]\n')
    server = load_inventory(tmp_path).servers["a"]
    assert server.trusted_proxies == ("127.0.0.1", "::1")
    # Both starts pass them: detached (these arguments) and the systemd unit (through sudo too).
    args = _serve_args(server, None)
    assert args[-4:] == ["--trusted-proxy", "127.0.0.1", "--trusted-proxy", "::1"]
    unit = systemd_unit(server, "deploy")
    assert "--trusted-proxy 127.0.0.1 --trusted-proxy ::1 --client-user deploy\n" in unit
    add_server(Server(name="b", host="h", trusted_proxies=("10.0.0.2",)), tmp_path)
    assert 'trusted_proxies = ["10.0.0.2"]' in path.read_text()
    assert load_inventory(tmp_path).servers["b"].trusted_proxies == ("10.0.0.2",)

    path.write_text('[servers.a]\nhost = "h"\ntrusted_proxies = ["caddy.local"]\n')
    with pytest.raises(ConfigError) as caught:
        load_inventory(tmp_path)
    assert "'caddy.local' is not an IP address" in caught.value.message
    assert ":3:" in str(caught.value) or "line 3" in str(caught.value)
