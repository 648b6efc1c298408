"""`tako init`, `tako config show` and `tako servers add|ls|rm` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tako_core.config import load_config, load_inventory
from tako_core.secrets import SecretsStore, new_exported_key
from tako_tui.cli import main

TAKO = Path(sys.executable).parent / "tako"


def tako(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_tako(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `tako`, as a person runs it."""
    return subprocess.run(
        [str(TAKO), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def servers(tako_home: Path) -> Path:
    for name in ("web-1", "web-2", "web-3"):
        assert tako("servers", "add", name, "--host", "127.0.0.2").exit_code == 0
    return tako_home


# --- config show: release and leader ------------------------------------------------------------

RELEASE_CASES = {
    # case: (top-level release line, env release line, expected release)
    "inherited": ('release = "./migrate"', "", "./migrate"),
    "overridden": ('release = "./migrate"', 'release = "./env-migrate"', "./env-migrate"),
    "cleared": ('release = "./migrate"', 'release = ""', None),
    "whitespace-only": ('release = "./migrate"', 'release = "   "', None),
    "whitespace-only-top": ('release = "  "', "", None),
    "none": ("", "", None),
}


@pytest.mark.parametrize("case", RELEASE_CASES)
def test_show_json_release_and_leader(servers: Path, tmp_path: Path, case: str) -> None:
    top, env, expected = RELEASE_CASES[case]
    path = tmp_path / "tako.toml"
    path.write_text(
        f'name = "shop"\n{top}\n[vars]\nA = "1"\n[vars.production]\nB = "2"\n'
        f'[envs.production]\nservers = ["web-2", "web-1"]\n{env}\n[envs.staging]\nservers = ["web-3"]\n'
    )
    result = tako("config", "show", "--env", "production", "--json", "-c", str(path))
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    del shown["secrets_key"]  # whether this machine has a keyring: see test_show_lists_secret_names
    assert shown == {
        "app": "shop",
        "env": "production",
        "servers": ["web-2", "web-1"],
        "leader": "web-2",
        "release": expected,
        "release_timeout": 600,
        "vars": {"A": "1", "B": "2"},
        "secrets": [],
        "tls": "off",  # no routes: nothing to certify
    }


def test_show_takes_dash_e(servers: Path, tmp_path: Path) -> None:
    (tmp_path / "tako.toml").write_text(
        'name = "shop"\n[envs.production]\nservers = ["web-1"]\n[envs.staging]\nservers = ["web-3"]\n'
    )
    result = run_tako(tmp_path, "config", "show", "-e", "staging", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["leader"] == "web-3"


def test_show_json_from_the_installed_command(servers: Path, tmp_path: Path) -> None:
    (tmp_path / "tako.toml").write_text(
        'name = "shop"\nrelease = "./migrate"\nrelease_timeout = "90s"\n'
        '[envs.production]\nservers = ["web-3", "web-1"]\nrelease = ""\n'
    )
    result = run_tako(tmp_path, "config", "show", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["leader"], shown["release"], shown["release_timeout"]) == ("web-3", None, 90)


def test_show_text(servers: Path, tmp_path: Path) -> None:
    path = tmp_path / "tako.toml"
    path.write_text(
        'name = "shop"\nrelease = "./migrate"\n[vars]\nA = "1"\n'
        '[envs.production]\nservers = ["web-1", "web-2"]\n'
    )
    result = tako("config", "show", "-c", str(path))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "servers          web-1 (leader), web-2" in lines
    assert "release          ./migrate" in lines
    assert "release_timeout  600s" in lines
    assert lines[-3:-1] == ["vars", "  A=1"]
    assert lines[-1].startswith("secrets          - (key ")


def test_show_lists_secret_names_and_whether_the_key_is_here(
    servers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names, never the values; the key available (from the env var) or not, and why not."""
    path = tmp_path / "tako.toml"
    path.write_text('name = "shop"\n[envs.production]\nservers = ["web-1"]\n')
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("TAKO_SECRETS_KEY_PRODUCTION", new_exported_key())
    store = SecretsStore.open(tmp_path, "shop")
    store.set("production", "DB_URL", "postgres://very-secret")
    store.set("production", "API_TOKEN", "tok-very-secret")
    store.save()
    here = run_tako(tmp_path, "config", "show")
    assert here.returncode == 0, here.stderr
    assert here.stdout.splitlines()[-1] == "secrets          API_TOKEN, DB_URL (key available)"
    assert "very-secret" not in here.stdout
    shown = json.loads(run_tako(tmp_path, "config", "show", "--json").stdout)
    assert (shown["secrets"], shown["secrets_key"]) == (["API_TOKEN", "DB_URL"], True)

    monkeypatch.delenv("TAKO_SECRETS_KEY_PRODUCTION")
    away = run_tako(tmp_path, "config", "show")
    assert away.returncode == 0, away.stderr
    assert "secrets          API_TOKEN, DB_URL (key not available: " in away.stdout
    assert "TAKO_SECRETS_KEY_PRODUCTION is not set" in away.stdout
    assert json.loads(run_tako(tmp_path, "config", "show", "--json").stdout)["secrets_key"] is False


def test_show_needs_env_when_there_are_several(servers: Path, tmp_path: Path) -> None:
    path = tmp_path / "tako.toml"
    path.write_text(
        'name = "a"\n[envs.production]\nservers = ["web-1"]\n[envs.staging]\nservers = ["web-1"]\n'
    )
    result = tako("config", "show", "-c", str(path))
    assert result.exit_code == 2
    assert "pass --env with one of: production, staging" in result.stderr
    result = tako("config", "show", "-c", str(path), "--env", "prod")
    assert result.exit_code == 2
    assert "did you mean 'production'?" in result.stderr


def test_show_with_a_server_missing_from_the_inventory(tako_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "tako.toml"
    path.write_text('name = "a"\n[envs.production]\nservers = ["web-1"]\n')
    result = tako("config", "show", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}:3:12: error: server 'web-1' is not in the inventory")
    assert result.stdout == ""


# --- broken tako.toml: one clear message, exit 2, no traceback -----------------------------------

BROKEN = {
    "bad type": (
        'name = "a"\n[envs.production]\nservers = ["web-1"]\ninstances = "two"\n',
        4,
        13,
        "'instances' must be an integer, not a string",
    ),
    "unknown key": (
        'name = "a"\nrelase = "x"\n[envs.production]\nservers = ["web-1"]\n',
        2,
        1,
        "unknown key 'relase' in the top level; did you mean 'release'?",
    ),
    "syntax error": (
        'name = "a"\n[envs.production\nservers = ["web-1"]\n',
        2,
        17,
        "TOML syntax error: unexpected end of line",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_config_from_the_installed_command(tako_home: Path, tmp_path: Path, case: str) -> None:
    text, line, column, words = BROKEN[case]
    (tmp_path / "tako.toml").write_text(text)
    result = run_tako(tmp_path, "config", "show", "--env", "production")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    first, hint = result.stderr.splitlines()
    assert first.startswith(f"tako.toml:{line}:{column}: error: {words}")
    assert hint.startswith("  hint: ")


def test_missing_config(tako_home: Path, tmp_path: Path) -> None:
    result = tako("config", "show", "-c", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "file not found" in result.stderr
    assert "tako init" in result.stderr


# --- tako init -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "preset", "words"),
    [
        ({"requirements.txt": "flask\n"}, "python", "pip install -r requirements.txt"),
        ({"pyproject.toml": "[project]\nname = 'x'\n", "manage.py": ""}, "python", "manage.py migrate"),
        # `pip install .` builds the app's own code: its install is reused only while that is unchanged.
        ({"pyproject.toml": "[project]\nname = 'x'\n"}, "python", 'install_inputs = ["**/*.py"]'),
        (
            {"package.json": '{"scripts": {"build": "vite build", "start": "node ."}}'},
            "node",
            'build = "npm ci && npm run build"',
        ),
        ({"package.json": "not json"}, "node", 'start = "node server.js"'),
        ({"package.json": "{}", "bun.lockb": ""}, "bun", "bun install --production"),
        ({"app.py": "print('hi')\n"}, "python", 'start = "python3 app.py"'),
        ({"main.py": ""}, "python", 'start = "python3 main.py"'),
        ({}, None, "# preset ="),
    ],
)
def test_init_detects_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], preset: str | None, words: str
) -> None:
    project = tmp_path / "My Shop 2"
    project.mkdir()
    for name, content in files.items():
        (project / name).write_text(content)
    monkeypatch.chdir(project)
    result = tako("init")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    text = (project / "tako.toml").read_text()
    assert words in text
    config = load_config(project / "tako.toml")  # what init writes always loads
    assert (config.name, config.preset) == ("my-shop-2", preset)
    assert list(config.envs) == ["production"]
    assert "commit tako.toml and .tako/" in result.stderr


def test_init_refuses_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tako.toml").write_text("# mine\n")
    result = tako("init", "--name", "shop")
    assert result.exit_code == 2
    assert "tako.toml already exists" in result.stderr
    assert "hint:" in result.stderr
    assert (tmp_path / "tako.toml").read_text() == "# mine\n"


def test_init_name_and_config_path(tmp_path: Path) -> None:
    assert tako("init", "--name", "shop", "-c", str(tmp_path / "app.toml")).exit_code == 0
    assert load_config(tmp_path / "app.toml").name == "shop"
    result = tako("init", "--name", "Bad Name", "-c", str(tmp_path / "other.toml"))
    assert result.exit_code == 2
    assert "--name: invalid app name 'Bad Name'" in result.stderr
    assert not (tmp_path / "other.toml").exists()


def test_init_names_a_folder_that_starts_with_a_digit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "2048").mkdir()
    monkeypatch.chdir(tmp_path / "2048")
    assert tako("init").exit_code == 0
    assert load_config(tmp_path / "2048" / "tako.toml").name == "app-2048"


# --- tako servers --------------------------------------------------------------------------------


def test_servers_add_ls_rm(tako_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = tako(
        "servers",
        "add",
        "web-1",
        "--host",
        "127.0.0.2",
        "--port",
        "2222",
        "--user",
        "deploy",
        "--identity",
        "keys/id",
        "--known-hosts",
        "~/kh",
        "--root",
        "/srv/tako",
        "--http-port",
        "8080",
        "--https-port",
        "8443",
        "--http-host",
        "127.0.0.2",
    )
    assert result.exit_code == 0, result.stderr
    assert "saved server web-1" in result.stderr
    assert tako("servers", "add", "web-2", "--host", "h2").exit_code == 0

    listed = json.loads(tako("servers", "ls", "--json").stdout)
    assert listed == [
        {
            "name": "web-1",
            "host": "127.0.0.2",
            "port": 2222,
            "user": "deploy",
            "identity": str(tmp_path / "keys/id"),
            "known_hosts": "~/kh",
            "root": "/srv/tako",
            "http_port": 8080,
            "https_port": 8443,
            "http_host": "127.0.0.2",
        },
        {
            "name": "web-2",
            "host": "h2",
            "port": 22,
            "user": None,
            "identity": None,
            "known_hosts": None,
            "root": "/opt/tako",
            "http_port": 80,
            "https_port": 443,
            "http_host": "0.0.0.0",
        },
    ]
    table = tako("servers", "ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "SSH", "ROOT", "HTTP", "HTTPS", "IDENTITY"]
    assert table[1].split() == [
        "web-1",
        "deploy@127.0.0.2:2222",
        "/srv/tako",
        "127.0.0.2:8080",
        "8443",
        str(tmp_path / "keys/id"),
    ]
    assert table[2].split() == ["web-2", "h2:22", "/opt/tako", "0.0.0.0:80", "443", "-"]

    duplicate = tako("servers", "add", "web-2", "--host", "h3")
    assert duplicate.exit_code == 2
    assert "--replace" in duplicate.stderr
    assert tako("servers", "add", "web-2", "--host", "h3", "--replace").exit_code == 0
    assert load_inventory().servers["web-2"].host == "h3"

    assert tako("servers", "rm", "web-1").exit_code == 0
    assert list(load_inventory().servers) == ["web-2"]
    unknown = tako("servers", "rm", "web-1")
    assert unknown.exit_code == 2
    assert "no server 'web-1'" in unknown.stderr


def test_servers_ls_empty(tako_home: Path) -> None:
    result = tako("servers", "ls")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "tako servers add" in result.stderr
    assert json.loads(tako("servers", "ls", "--json").stdout) == []


def test_servers_bad_flags(tako_home: Path) -> None:
    result = tako("servers", "add", "web-1", "--host", "h", "--port", "0")
    assert result.exit_code == 2
    assert "--port: 'port' must be between 1 and 65535" in result.stderr
    assert tako("servers", "add", "web-1").exit_code == 2  # --host is required (click's usage error)


def test_servers_with_a_broken_inventory_from_the_installed_command(tako_home: Path, tmp_path: Path) -> None:
    (tako_home / "servers.toml").write_text('[servers.a]\nhost = "h"\nport = "22"\n')
    result = run_tako(tmp_path, "servers", "ls")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{tako_home / 'servers.toml'}:3:8: error: 'port' must be an integer")
