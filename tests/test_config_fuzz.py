"""Random and malformed tako.toml / servers.toml documents: the only failure is ConfigError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tomlkit.items import AoT

from tako_core.config import AppConfig, Inventory, load_config, load_inventory
from tako_core.config.app import ENV_KEYS, TOP_KEYS
from tako_core.config.inventory import SERVER_KEYS
from tako_core.config.locate import Locator
from tako_core.errors import ConfigError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID = """\
name = "shop"   # the app
preset = "python"
release = "./migrate"
release_timeout = "10m"
health_path = "/health"

[vars]
A = "1"
[vars.production]
A = "2"

[envs.production]
routes = ["example.com"]
servers = ["web-1", "web-2"]
release = ""
instances = 2

[envs.staging]
route = "staging.example.com"
servers = ["web-1"]
"""

KEYS = st.sampled_from([*TOP_KEYS, *ENV_KEYS, *SERVER_KEYS, "production", "servers", "A", "x"]) | st.text(
    max_size=8
)
SCALARS = (
    st.text(max_size=12)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.dates()
    | st.times()
    | st.datetimes()
    | st.sampled_from(["", " ", "10m", "web-1", "/", "python", "1h30m", "0"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DOCS = st.dictionaries(KEYS, VALUES, max_size=8)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "tako.toml"


def load(path: Path, data: bytes | str) -> AppConfig | None:
    """load_config on `data`: its config, or None after a ConfigError with a usable location."""
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    try:
        return load_config(path)
    except ConfigError as caught:
        err = caught
    assert err.path == path
    assert err.message
    assert err.hint
    assert err.line is None or err.line >= 1
    assert err.column is None or err.column >= 1
    return None


def structured(draw: st.DrawFn) -> dict[str, Any]:
    """A document close to a real one, so validation gets past the first check now and then."""
    env = draw(st.dictionaries(st.sampled_from([*ENV_KEYS, "relase"]), VALUES, max_size=5))
    env.setdefault("servers", draw(st.lists(st.sampled_from(["web-1", "web-2", "Web", ""]), max_size=3)))
    doc = draw(st.dictionaries(st.sampled_from(TOP_KEYS), VALUES, max_size=5))
    doc.setdefault("name", draw(st.sampled_from(["shop", "Shop", "a-", "x" * 64])))
    doc["envs"] = {draw(st.sampled_from(["production", "Prod", "staging"])): env}
    return doc


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text(scratch: Path, text: str) -> None:
    load(scratch, text)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(scratch: Path, data: bytes) -> None:
    load(scratch, data)


@FUZZ
@given(doc=DOCS)
def test_random_valid_toml(scratch: Path, doc: dict[str, Any]) -> None:
    load(scratch, tomlkit.dumps(doc))


@FUZZ
@given(doc=st.composite(structured)())
def test_documents_shaped_like_tako_toml(scratch: Path, doc: dict[str, Any]) -> None:
    load(scratch, tomlkit.dumps(doc))


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "duplicate_line", "swap_lines"]),
        st.integers(min_value=0, max_value=len(VALID)),
        st.text(alphabet="[]{}=\",.#'\n x5ab-", max_size=5),
    ),
    min_size=1,
    max_size=4,
)


def mutate(text: str, mutations: list[tuple[str, int, str]]) -> str:
    for kind, at, chunk in mutations:
        at = min(at, len(text))
        lines = text.splitlines(keepends=True) or [""]
        line = at % len(lines)
        if kind == "delete":
            text = text[:at] + text[at + len(chunk) + 1 :]
        elif kind == "insert":
            text = text[:at] + chunk + text[at:]
        elif kind == "duplicate_line":
            text = "".join([*lines[: line + 1], lines[line], *lines[line + 1 :]])
        else:
            lines[line], lines[-1] = lines[-1], lines[line]
            text = "".join(lines)
    return text


@FUZZ
@given(mutations=MUTATIONS)
def test_mutations_of_a_valid_document(scratch: Path, mutations: list[tuple[str, int, str]]) -> None:
    assert load(scratch, VALID) is not None
    load(scratch, mutate(VALID, mutations))


@FUZZ
@given(text=st.text(max_size=200) | st.builds(tomlkit.dumps, DOCS))
def test_random_inventories(tmp_path: Path, text: str) -> None:
    (tmp_path / "servers.toml").write_text(text, encoding="utf-8", newline="")
    try:
        assert isinstance(load_inventory(tmp_path), Inventory)
        return
    except ConfigError as caught:
        err = caught
    assert err.message
    assert err.hint


def paths(value: object, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every key and array element of a tomlkit document, except inside arrays of tables
    (`[[x]]`, which the locator indexes as one table: tako's schema never looks inside them)."""
    if isinstance(value, AoT):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths(item, (*prefix, index))


@FUZZ
@given(doc=DOCS)
def test_locator_finds_every_key_of_a_random_document(doc: dict[str, Any]) -> None:
    text = tomlkit.dumps(doc)
    data = tomlkit.parse(text)
    locator = Locator(text)
    lines = text.split("\n")  # not splitlines(): TOML lines end at \n only
    for path in paths(data):
        line, column = locator.key(path) if isinstance(path[-1], str) else locator.value(path)
        at = lines[line - 1][column - 1 :]
        if isinstance(path[-1], str):
            assert at.startswith((path[-1], '"', "'")), (path, line, column, text)
        else:
            assert at[:1] not in ("", " ", ",", "]"), (path, line, column, text)
