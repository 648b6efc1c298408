"""The secrets screen (`tako secrets edit`) with Pilot, over a real SecretsStore and an in-memory keyring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keyring
import keyring.core
import pytest
from textual.pilot import Pilot

from tako_core.secrets import SecretsStore, key_env_var, secrets_path
from tako_core.secrets._crypto import export_key  # a fixed key for deterministic snapshots
from tako_tui.app import SecretsConsole
from tako_tui.screens.confirm import ConfirmScreen
from tako_tui.screens.secrets import HIDDEN, SecretForm, SecretsScreen
from tests.dict_keyring import DictKeyring

APP = "shop"
DB = "postgres://shop:s3cr3t-Hunter2@db/shop"
NEW = "sk_live_9f8e7d6c5b4a-roundtrip"


@pytest.fixture
def ring(monkeypatch: pytest.MonkeyPatch) -> DictKeyring:
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    for var in ("TAKO_SECRETS_KEY_PRODUCTION", "TAKO_SECRETS_KEY_STAGING"):
        monkeypatch.delenv(var, raising=False)
    backend = DictKeyring()
    keyring.set_keyring(backend)
    return backend


@pytest.fixture
def project(tmp_path: Path, ring: DictKeyring) -> Path:
    store = SecretsStore.open(tmp_path, APP)
    store.set("production", "DATABASE_URL", DB)
    store.set("production", "SMTP_PASSWORD", "mail-pass-123")
    store.set("staging", "DATABASE_URL", "postgres://staging")
    store.save()
    return tmp_path


def editor(project: Path, env: str = "production") -> SecretsConsole:
    return SecretsConsole(SecretsStore.open(project, APP), ["production", "staging"], env)


def screen_of(app: SecretsConsole) -> SecretsScreen:
    return app.secrets_screen


def cell(app: SecretsConsole, name: str) -> str:
    from textual.widgets import DataTable

    table = screen_of(app).query_one("#names", DataTable)
    return str(table.get_cell(name, "value"))


async def type_text(pilot: Pilot[Any], text: str) -> None:
    await pilot.press(*text)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_names_hidden_until_revealed(project: Path) -> None:
    app = editor(project)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = screen_of(app)
        assert screen.names == ["DATABASE_URL", "SMTP_PASSWORD"]
        assert cell(app, "DATABASE_URL") == HIDDEN
        await pilot.press("r")
        await pilot.pause()
        assert cell(app, "DATABASE_URL") == DB
        await pilot.press("r")
        await pilot.pause()
        assert cell(app, "DATABASE_URL") == HIDDEN
        # Another env: its own names.
        await pilot.click("#envs")
        await pilot.press("down")
        await pilot.pause()
        assert screen.env == "staging"
        assert screen.names == ["DATABASE_URL"]


async def test_add_a_secret_round_trips_through_the_keyring(project: Path, ring: DictKeyring) -> None:
    app = editor(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, SecretForm)
        await type_text(pilot, "STRIPE_KEY")
        await pilot.press("tab")
        await type_text(pilot, NEW)
        await pilot.press("enter")
        await pilot.pause()
        screen = screen_of(app)
        assert "STRIPE_KEY" in screen.names
        assert screen.store.dirty
        await pilot.press("s")
        await pilot.pause()
        assert not screen.store.dirty
        await pilot.press("q")
    # A fresh store (the key from the keyring) decrypts what the screen saved.
    assert SecretsStore.open(project, APP).get("production", "STRIPE_KEY") == NEW
    assert ring.entries  # the key lives in the keyring
    # Nothing decrypted was ever written to disk: no file under the project holds a value.
    for path in files_under(project):
        data = path.read_bytes()
        for plain in (NEW, DB, "mail-pass-123"):
            assert plain.encode() not in data, path


async def test_edit_and_delete(project: Path) -> None:
    app = editor(project)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = screen_of(app)
        await pilot.press("down")  # SMTP_PASSWORD
        assert screen.selected == "SMTP_PASSWORD"
        await pilot.press("e")
        await pilot.pause()
        await type_text(pilot, "rotated-456")
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("r")
        await pilot.pause()
        assert cell(app, "SMTP_PASSWORD") == "rotated-456"
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert screen.names == ["DATABASE_URL"]
        await pilot.press("s")
        await pilot.pause()
    assert SecretsStore.open(project, APP).names("production") == ["DATABASE_URL"]


async def test_a_bad_name_is_refused_in_the_form(project: Path) -> None:
    app = editor(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("a")
        await pilot.pause()
        await type_text(pilot, "9bad name")
        await pilot.press("tab")
        await type_text(pilot, "x")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SecretForm)
        assert str(app.screen.query_one("#form-error").render())
        await pilot.press("escape")
        await pilot.pause()
        assert not screen_of(app).store.dirty


async def test_a_missing_key_says_how_to_import_one(project: Path, ring: DictKeyring) -> None:
    ring.entries.clear()  # another machine: the file is here, the key is not
    app = editor(project)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        status = screen_of(app).status
        assert "tako secrets key import" in status
        assert cell(app, "DATABASE_URL") == HIDDEN
        await pilot.press("a")  # adding is refused before anyone types a value
        await pilot.pause()
        assert isinstance(app.screen, SecretsScreen)


async def test_quitting_with_unsaved_changes_asks(project: Path) -> None:
    app = editor(project)
    before = secrets_path(project).read_bytes()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # keep editing
        await pilot.pause()
        assert app.is_running
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("y")  # discard
        await pilot.pause()
    assert secrets_path(project).read_bytes() == before


@pytest.mark.parametrize("size", [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")])
def test_snapshot(
    snap_compare: Callable[..., bool],
    tmp_path: Path,
    ring: DictKeyring,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
) -> None:
    # Fixed keys (from the environment, as in CI) so the key ids on screen are the same every run.
    for env, fill in (("production", 1), ("staging", 2)):
        monkeypatch.setenv(key_env_var(env), export_key(bytes([fill]) * 32))
    store = SecretsStore.open(tmp_path, APP)
    store.set("production", "DATABASE_URL", DB)
    store.set("production", "SMTP_PASSWORD", "mail-pass-123")
    store.set("staging", "DATABASE_URL", "postgres://staging")
    store.save()
    monkeypatch.chdir(tmp_path)  # the header shows the file relative to here
    app = editor(tmp_path)

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await pilot.press("r")  # DATABASE_URL revealed, SMTP_PASSWORD still hidden
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
