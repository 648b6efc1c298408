"""resolve(): servers from the inventory, the leader, release resolution, merged vars."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako_core.config import Inventory, Server, default_env, load_config, resolve, resolve_release
from tako_core.errors import BadInput, ConfigError

INVENTORY = Inventory(
    servers={
        name: Server(name=name, host=f"127.0.0.{i + 2}") for i, name in enumerate(["web-1", "web-2", "db"])
    },
    path=Path("/home/me/.config/tako/servers.toml"),
)


@pytest.mark.parametrize(
    ("top", "env", "expected"),
    [
        ("./migrate", None, "./migrate"),  # inherited
        ("./migrate", "./other", "./other"),  # overridden
        ("./migrate", "", None),  # cleared
        ("./migrate", "   ", None),  # whitespace-only at env level clears it too
        ("./migrate", " \t\n", None),
        ("   ", None, None),  # whitespace-only at the top = no release
        ("", None, None),
        ("   ", " \t", None),
        (None, None, None),  # no release at all
        (None, "./env-only", "./env-only"),
        (None, "", None),
    ],
)
def test_release_resolution(top: str | None, env: str | None, expected: str | None) -> None:
    assert resolve_release(top, env) == expected


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tako.toml"
    path.write_text(text)
    return path


def test_resolve_merges_and_orders(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        'name = "shop"\nrelease = "./migrate"\nstart = "./run"\nrelease_timeout = 30\n'
        '[vars]\nA = "1"\nB = "1"\n[vars.production]\nB = "2"\nC = 3\n'
        '[envs.production]\nroute = "example.com"\nservers = ["web-2", "web-1"]\ninstances = 3\n'
        '[envs.staging]\nservers = ["db"]\n',
    )
    resolved = resolve(load_config(path), "production", INVENTORY)
    assert resolved.app == "shop"
    assert resolved.env == "production"
    assert resolved.config_path == path
    assert [s.name for s in resolved.servers] == ["web-2", "web-1"]
    assert resolved.leader == INVENTORY.servers["web-2"]
    assert (resolved.release, resolved.release_timeout, resolved.start) == ("./migrate", 30.0, "./run")
    assert resolved.vars == {"A": "1", "B": "2", "C": "3"}
    assert (resolved.routes, resolved.instances, resolved.health_path) == (("example.com",), 3, "/")
    staging = resolve(load_config(path), "staging", INVENTORY)
    assert staging.vars == {"A": "1", "B": "1"}
    assert staging.leader.name == "db"


def test_release_from_tako_toml_per_env(tmp_path: Path) -> None:
    """What the gate runs per env, read from a real file: a blank env value clears the inherited one."""
    path = config(
        tmp_path,
        'name = "shop"\nrelease = "./migrate"\n'
        '[envs.production]\nservers = ["db"]\n'
        '[envs.staging]\nservers = ["db"]\nrelease = "  "\n'
        '[envs.preview]\nservers = ["db"]\nrelease = ""\n'
        '[envs.qa]\nservers = ["db"]\nrelease = "./seed"\n',
    )
    app = load_config(path)
    releases = {env: resolve(app, env, INVENTORY).release for env in app.envs}
    assert releases == {"production": "./migrate", "staging": None, "preview": None, "qa": "./seed"}
    blank_top = load_config(config(tmp_path, 'name = "a"\nrelease = " \\t"\n[envs.p]\nservers = ["db"]\n'))
    assert resolve(blank_top, "p", INVENTORY).release is None


def test_server_missing_from_inventory_points_at_its_entry(tmp_path: Path) -> None:
    path = config(tmp_path, 'name = "a"\n[envs.prod]\nservers = [\n  "web-1",\n  "web-3",\n]\n')
    with pytest.raises(ConfigError) as caught:
        resolve(load_config(path), "prod", INVENTORY)
    err = caught.value
    assert (err.path, err.line, err.column) == (path, 5, 3)
    assert "server 'web-3' is not in the inventory" in err.message
    assert "did you mean 'web-" in err.message
    assert err.hint is not None
    assert "tako servers add web-3" in err.hint


def test_unknown_env_suggests(tmp_path: Path) -> None:
    app = load_config(config(tmp_path, 'name = "a"\n[envs.production]\nservers = ["db"]\n'))
    with pytest.raises(BadInput, match="did you mean 'production'") as caught:
        resolve(app, "prod", INVENTORY)
    assert caught.value.exit_code == 2


def test_default_env(tmp_path: Path) -> None:
    one = load_config(config(tmp_path, 'name = "a"\n[envs.production]\nservers = ["db"]\n'))
    assert default_env(one) == "production"
    two = load_config(
        config(tmp_path, 'name = "a"\n[envs.b]\nservers = ["db"]\n[envs.a]\nservers = ["db"]\n')
    )
    with pytest.raises(BadInput) as caught:
        default_env(two)
    assert caught.value.hint == "pass --env with one of: b, a"
