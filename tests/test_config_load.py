"""load_config: a valid tako.toml becomes an AppConfig; anything wrong is one ConfigError at file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako_core.config import AppConfig, EnvConfig, load_config
from tako_core.errors import ConfigError

FULL = """\
# the shop
name = "shop"
preset = "python"
build = "make assets"
install = "pip install -r requirements.txt"
install_inputs = ["constraints.txt", "vendor/*.whl"]
start = "gunicorn -b 127.0.0.1:$PORT app:app"
release = "./manage.py migrate"
release_timeout = "1h30m"
health_path = "/healthz"

[vars]
LOG_LEVEL = "info"
WORKERS = 4
DEBUG = false
RATIO = 0.5

[vars.production]
LOG_LEVEL = "warning"

[envs.production]
routes = ["Example.com", "*.example.com"]
servers = ["web-1", "web-2"]
instances = 2

[envs.staging]
route = "staging.example.com"
servers = ["web-3"]
release = ""
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tako.toml"
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config == AppConfig(
        path=path,
        name="shop",
        preset="python",
        build="make assets",
        install="pip install -r requirements.txt",
        install_inputs=("constraints.txt", "vendor/*.whl"),
        start="gunicorn -b 127.0.0.1:$PORT app:app",
        release="./manage.py migrate",
        release_timeout=5400.0,
        health_path="/healthz",
        vars={"LOG_LEVEL": "info", "WORKERS": "4", "DEBUG": "false", "RATIO": "0.5"},
        env_vars={"production": {"LOG_LEVEL": "warning"}, "staging": {}},
        envs={
            "production": EnvConfig(
                "production", ("example.com", "*.example.com"), ("web-1", "web-2"), None, 2
            ),
            "staging": EnvConfig("staging", ("staging.example.com",), ("web-3",), ""),
        },
    )


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'name = "a"\n[envs.prod]\nservers = ["s"]\n'))
    assert (config.preset, config.build, config.install, config.start, config.release) == (None,) * 5
    assert (config.release_timeout, config.health_path, config.vars) == (600.0, "/", {})
    assert config.envs["prod"] == EnvConfig("prod", (), ("s",), None, 1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90", 90.0),
        (90, 90.0),
        (1.5, 1.5),
        ('"90s"', 90.0),
        ('"10m"', 600.0),
        ('"1h"', 3600.0),
        ('"1h 30m"', 5400.0),
        ('" 2.5m "', 150.0),
        ('"600"', 600.0),
    ],
)
def test_release_timeout_forms(tmp_path: Path, value: object, seconds: float) -> None:
    text = f'name = "a"\nrelease_timeout = {value}\n[envs.prod]\nservers = ["s"]\n'
    assert load_config(write(tmp_path, text)).release_timeout == seconds


def test_blank_commands_count_as_unset_but_release_stays_raw(tmp_path: Path) -> None:
    text = 'name = "a"\nstart = "  "\nrelease = "  "\n[envs.prod]\nservers = ["s"]\nrelease = ""\n'
    config = load_config(write(tmp_path, text))
    assert (config.start, config.release, config.envs["prod"].release) == (None, "  ", "")


ENV = '\n[envs.production]\nservers = ["web-1"]\n'

# (document, line, column, words the message must contain)
BROKEN = [
    # unknown keys, with a suggestion
    (
        'name = "a"\nrelase = "x"' + ENV,
        2,
        1,
        "unknown key 'relase' in the top level; did you mean 'release'?",
    ),
    (
        'name = "a"' + ENV + 'relase = "x"\n',
        4,
        1,
        "unknown key 'relase' in [envs.production]; did you mean 'release'?",
    ),
    (
        'name = "a"\n[envs]\nproduction = { servers = ["w"], instance = 2 }\n',
        3,
        33,
        "did you mean 'instances'?",
    ),
    ('servers = ["w"]\nname = "a"' + ENV, 1, 1, "'servers' belongs to an environment, not the top level"),
    ('name = "a"' + ENV + "[envs.production.vars]\nA = 1\n", 4, 18, "go in [vars.production]"),
    # wrong types point at the value
    ('name = "a"' + ENV + 'instances = "2"\n', 4, 13, "'instances' must be an integer, not a string"),
    ('name = "a"' + ENV + "instances = 0\n", 4, 13, "between 1 and 64"),
    ('name = "a"' + ENV + "instances = true\n", 4, 13, "not a boolean"),
    ("name = 5" + ENV, 1, 8, "'name' must be a string, not an integer"),
    ('name = "a"\nbuild = ["make"]' + ENV, 2, 9, "'build' must be a string, not an array"),
    ('name = "a"\nrelease_timeout = "soon"' + ENV, 2, 19, "not a duration"),
    ('name = "a"\nrelease_timeout = "0.05s"' + ENV, 2, 19, "between 0.1s and 24h"),
    ('name = "a"\nrelease_timeout = 0' + ENV, 2, 19, "between 0.1s and 24h"),
    ('name = "a"\nrelease_timeout = -5' + ENV, 2, 19, "between 0.1s and 24h"),
    ('name = "a"\nrelease_timeout = nan' + ENV, 2, 19, "between 0.1s and 24h"),
    ('name = "a"\nrelease_timeout = "48h"' + ENV, 2, 19, "between 0.1s and 24h"),
    ('name = "a"\nhealth_path = "health"' + ENV, 2, 15, "invalid health_path"),
    ('name = "a"\ninstall_inputs = "c.txt"' + ENV, 2, 18, "'install_inputs' must be an array of strings"),
    ('name = "a"\ninstall_inputs = ["c.txt", 2]' + ENV, 2, 28, "'install_inputs[1]' must be a string"),
    ('name = "a"\ninstall_inputs = ["../c.txt"]' + ENV, 2, 19, "not a path inside the app"),
    ('name = "a"\ninstall_inputs = ["/etc/x"]' + ENV, 2, 19, "not a path inside the app"),
    ('name = "a"\npreset = "pyhton"' + ENV, 2, 10, "unknown preset 'pyhton'; did you mean 'python'?"),
    # names
    ('name = "My App"' + ENV, 1, 8, "invalid app name 'My App'"),
    ('name = "app-"' + ENV, 1, 8, "invalid app name"),
    (f'name = "{"a" * 64}"' + ENV, 1, 8, "invalid app name"),
    ('name = "a"\n[envs.Prod]\nservers = ["w"]\n', 2, 7, "invalid environment name 'Prod'"),
    ('# no name\n[envs.prod]\nservers = ["w"]\n', 1, 1, "missing key 'name'"),
    # envs
    ('name = "a"\n', 1, 1, "no environments"),
    ('name = "a"\nenvs = {}\n', 2, 1, "[envs] is empty"),
    ('name = "a"\nenvs = 3\n', 2, 8, "'envs' must be a table, not an integer"),
    ('name = "a"\n[envs.prod]\nroute = "x.com"\n', 2, 7, "missing key 'servers' in [envs.prod]"),
    ('name = "a"\n[envs.prod]\nservers = []\n', 3, 11, "'servers' is empty"),
    ('name = "a"\n[envs.prod]\nservers = "web-1"\n', 3, 11, "must be an array of strings, not a string"),
    ('name = "a"\n[envs.prod]\nservers = [\n  "w1",\n  "w2",\n  "w1",\n]\n', 6, 3, "'w1' is listed twice"),
    (
        'name = "a"\n[envs.prod]\nservers = ["w1", 2]\n',
        3,
        18,
        "'servers[1]' must be a string, not an integer",
    ),
    ('name = "a"\n[envs.prod]\nservers = ["Web 1"]\n', 3, 12, "invalid server name 'Web 1'"),
    ('name = "a"' + ENV + 'route = "a.com"\nroutes = ["b.com"]\n', 5, 1, "either 'route' or 'routes'"),
    ('name = "a"' + ENV + 'route = "https://a.com"\n', 4, 9, "has a scheme"),
    ('name = "a"' + ENV + 'routes = ["a.com", "a b"]\n', 4, 20, "not a host name"),
    ('name = "a"' + ENV + 'route = "a.com:8080"\n', 4, 9, "not a host name"),
    ('name = "a"' + ENV + "release = 1\n", 4, 11, "'release' must be a string, not an integer"),
    ('name = "a"\n[[envs]]\nservers = ["w"]\n', 2, 3, "'envs' must be a table, not an array"),
    # vars
    ('name = "a"\n[vars]\n1X = "a"' + ENV, 3, 1, "invalid variable name '1X'"),
    ('name = "a"\n[vars]\nPORT = "1"' + ENV, 3, 1, "variable PORT is set by tako"),
    ('name = "a"\n[vars]\nTAKO_BUILD = "1"' + ENV, 3, 1, "set by tako"),
    ('name = "a"\n[vars]\nX = [1]' + ENV, 3, 5, "'X' must be a string, number or boolean, not an array"),
    ('name = "a"\n[vars]\nX = 1979-05-27' + ENV, 3, 5, "not a date/time"),
    ('name = "a"\n[vars.prodution]\nX = "1"' + ENV, 2, 7, "not in [envs]; did you mean 'production'?"),
    ('name = "a"\n[vars.production]\nX = { a = 1 }' + ENV, 3, 5, "'X' must be a string, number or boolean"),
    ('name = "a"\nvars = "x"' + ENV, 2, 8, "'vars' must be a table"),
    ('name = "a"\n[vars]\nX = "a\\u0000b"' + ENV, 3, 5, "NUL"),
    # TOML syntax: tomlkit's position, 1-based
    ('name = "a"\nbuild = "unterminated\n' + ENV, 2, 22, "TOML syntax error"),
    ('name = "a"\nname = "b"\n' + ENV, 2, 1, 'TOML syntax error: key "name" already exists'),
    ('name = "a"\n[envs.production]\nservers = ["w",\n', 4, 1, "unexpected end of file"),
    ('name = "a"\n[envs.production]\nservers = ["w"]\n[envs.production]\n', 4, 2, "already exists"),
    ('name = "a"\n[envs.p]\nservers = ["w"]\n[envs]\np.servers = ["x"]\n', 5, 1, "redefinition"),
    ('name = "a"\nrelease = \n', 2, 11, "TOML syntax error"),
]


@pytest.mark.parametrize(("text", "line", "column", "words"), BROKEN)
def test_broken_configs(tmp_path: Path, text: str, line: int, column: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert words in err.message
    assert (err.path, err.line, err.column) == (path, line, column), err.render()
    assert err.hint
    assert err.render().startswith(f"{path}:{line}:{column}: error: ")


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "tako.toml")
    assert caught.value.message == "file not found"
    assert caught.value.hint is not None
    assert "tako init" in caught.value.hint


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_invalid_utf8_points_at_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "tako.toml"
    path.write_bytes(b'name = "a"\nbuild = "\xc3\xa9\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.line, caught.value.column) == (2, 11)
