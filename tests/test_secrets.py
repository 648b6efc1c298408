"""The secrets core in-process: file format, crypto binding, key sources, errors.

The keyring is a dict-backed backend selected on purpose with `keyring.set_keyring`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import keyring
import keyring.core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tako_core.errors import SecretsError
from tako_core.secrets import SecretsStore, is_valid_name, key_env_var, load_env_secrets, secrets_path
from tests.dict_keyring import DictKeyring

APP = "shop"
VALUE = "postgres://shop:hunter2-very-secret@db/shop"


class ForgetfulKeyring(DictKeyring):
    """Accepts writes and keeps nothing, like a misconfigured backend."""

    def set_password(self, service: str, username: str, password: str) -> None:
        pass


class PlaintextKeyring(DictKeyring):
    """Stands in for keyrings.alt's plaintext file backend (the module name is what tako checks)."""


PlaintextKeyring.__module__ = "keyrings.alt.file"


@pytest.fixture
def use_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restores whatever keyring backend was active before the test."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)


@pytest.fixture
def ring(use_keyring: None) -> DictKeyring:
    backend = DictKeyring()
    keyring.set_keyring(backend)
    return backend


def no_keyring() -> None:
    keyring.set_keyring(keyring.core.load_keyring("keyring.backends.fail.Keyring"))


def store(tmp_path: Path, environ: dict[str, str] | None = None, app: str = APP) -> SecretsStore:
    return SecretsStore.open(tmp_path, app, environ=environ or {})


def saved(tmp_path: Path, values: dict[tuple[str, str], str]) -> SecretsStore:
    s = store(tmp_path)
    for (env, name), value in values.items():
        s.set(env, name, value)
    s.save()
    return s


def load_env_secrets_with(tmp_path: Path, environ: dict[str, str], env: str) -> dict[str, str]:
    return store(tmp_path, environ).get_all(env)


def stored_value(tmp_path: Path, env: str, name: str) -> str:
    value: str = json.loads(secrets_path(tmp_path).read_text())["envs"][env]["secrets"][name]
    return value


def replace_value(tmp_path: Path, env: str, name: str, new: str) -> None:
    path = secrets_path(tmp_path)
    doc = json.loads(path.read_text())
    doc["envs"][env]["secrets"][name] = new
    path.write_text(json.dumps(doc))


def encodings(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode().rstrip("="),
        raw.hex(),
    ]


# --- round trip and the file --------------------------------------------------------------------


def test_round_trip_and_file_layout(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "DATABASE_URL"): VALUE, ("staging", "DATABASE_URL"): "sqlite:///x.db"})
    again = store(tmp_path)
    assert again.envs() == ["production", "staging"]
    assert again.names("production") == ["DATABASE_URL"]
    assert again.names("missing") == []
    assert again.get("production", "DATABASE_URL") == VALUE
    assert load_env_secrets(tmp_path, APP, "staging") == {"DATABASE_URL": "sqlite:///x.db"}

    text = secrets_path(tmp_path).read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert doc["version"] == 1
    kid = doc["envs"]["production"]["key_id"]
    assert kid == again.key_id("production")
    assert len(kid) == 8
    assert kid != doc["envs"]["staging"]["key_id"]  # one key per env
    blob = base64.b64decode(doc["envs"]["production"]["secrets"]["DATABASE_URL"])
    assert len(blob) == 12 + len(VALUE.encode()) + 16  # nonce || ciphertext || tag

    # The keyring holds one self-checking entry per env; the file never holds a key.
    assert sorted(ring.entries) == sorted(
        [("tako", f"shop/production/{kid}"), ("tako", f"shop/staging/{doc['envs']['staging']['key_id']}")]
    )
    exported = ring.entries[("tako", f"shop/production/{kid}")]
    assert exported.startswith(f"tako1:{kid}:")
    assert exported.split(":")[2] not in text


def test_file_never_contains_a_value_in_any_plain_encoding(tmp_path: Path, ring: DictKeyring) -> None:
    values = {"A_TOKEN": VALUE, "SHORTISH": "abcd", "UNICODE": "pässwörd-ü-✓", "SPACES": " x y z "}
    saved(tmp_path, {("production", name): value for name, value in values.items()})
    text = secrets_path(tmp_path).read_text()
    for value in values.values():
        for form in encodings(value):
            assert form not in text


def test_same_value_twice_gives_different_ciphertexts(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE, ("production", "B"): VALUE})
    assert stored_value(tmp_path, "production", "A") != stored_value(tmp_path, "production", "B")


def test_setting_an_unchanged_value_keeps_the_file_byte_identical(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE, ("production", "B"): "other-value"})
    before = secrets_path(tmp_path).read_text()
    s = store(tmp_path)
    s.set("production", "A", VALUE)
    assert not s.dirty
    s.set("production", "B", "changed-value")
    s.save()
    after = secrets_path(tmp_path).read_text()
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert len(changed) == 1
    assert '"B"' in changed[0]


def test_remove_keeps_the_env_and_its_key(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    s = store(tmp_path)
    kid = s.key_id("production")
    s.remove("production", "A")
    s.save()
    again = store(tmp_path)
    assert again.envs() == ["production"]
    assert again.names("production") == []
    assert again.key_id("production") == kid
    with pytest.raises(SecretsError, match="no secret A in env production"):
        again.remove("production", "A")


def test_nothing_is_written_before_save(tmp_path: Path, ring: DictKeyring) -> None:
    s = store(tmp_path)
    s.set("production", "A", VALUE)
    assert not secrets_path(tmp_path).exists()
    s.save()
    assert secrets_path(tmp_path).exists()
    assert [p.name for p in secrets_path(tmp_path).parent.iterdir()] == ["secrets.json"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1))
def test_any_text_round_trips(tmp_path: Path, ring: DictKeyring, value: str) -> None:
    s = store(tmp_path)
    s.set("production", "VALUE", value)
    s.save()
    assert store(tmp_path).get("production", "VALUE") == value


# --- tampering ------------------------------------------------------------------------------------


def test_a_flipped_byte_fails_naming_env_and_secret(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "DATABASE_URL"): VALUE})
    blob = bytearray(base64.b64decode(stored_value(tmp_path, "production", "DATABASE_URL")))
    for index in (0, 12, len(blob) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(blob)
        flipped[index] ^= 0x01
        replace_value(tmp_path, "production", "DATABASE_URL", base64.b64encode(flipped).decode())
        with pytest.raises(SecretsError) as caught:
            store(tmp_path).get("production", "DATABASE_URL")
        message = caught.value.render()
        assert "DATABASE_URL" in message
        assert "env production" in message
        assert caught.value.hint
        assert VALUE not in message


def test_a_value_moved_to_another_name_fails(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE, ("production", "B"): "b-value"})
    a, b = stored_value(tmp_path, "production", "A"), stored_value(tmp_path, "production", "B")
    replace_value(tmp_path, "production", "A", b)
    replace_value(tmp_path, "production", "B", a)
    s = store(tmp_path)
    for name in ("A", "B"):
        with pytest.raises(SecretsError, match=f"secret {name} of env production"):
            s.get("production", name)


def test_a_value_moved_to_another_env_or_app_fails(tmp_path: Path, ring: DictKeyring) -> None:
    s = saved(tmp_path, {("production", "A"): VALUE})
    prod_key = s.export_key("production")
    ciphertext = stored_value(tmp_path, "production", "A")

    # Another app with the very same key: the app is bound too.
    other_app = SecretsStore.open(tmp_path, "blog", environ={"TAKO_SECRETS_KEY_PRODUCTION": prod_key})
    with pytest.raises(SecretsError, match="secret A of env production"):
        other_app.get("production", "A")

    # Another env: make staging use the production key id, so only the binding can object.
    path = secrets_path(tmp_path)
    doc = json.loads(path.read_text())
    doc["envs"]["staging"] = {"key_id": doc["envs"]["production"]["key_id"], "secrets": {"A": ciphertext}}
    path.write_text(json.dumps(doc))
    staging = store(tmp_path, {"TAKO_SECRETS_KEY_STAGING": prod_key})
    with pytest.raises(SecretsError, match="secret A of env staging"):
        staging.get("staging", "A")


def test_garbage_values_fail_clearly(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    for garbage in ("not base64!", base64.b64encode(b"short").decode()):
        replace_value(tmp_path, "production", "A", garbage)
        with pytest.raises(SecretsError, match="secret A of env production"):
            store(tmp_path).get("production", "A")


def test_decryption_errors_never_contain_the_value(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    replace_value(tmp_path, "production", "A", stored_value(tmp_path, "production", "A")[:-4] + "AAA=")
    with pytest.raises(SecretsError) as caught:
        load_env_secrets(tmp_path, APP, "production")
    err = caught.value
    for text in (str(err), err.render(), repr(err.args)):
        for form in encodings(VALUE):
            assert form not in text
    assert err.__cause__ is None  # no chained cryptography exception either
    assert err.__suppress_context__


def test_setting_over_a_damaged_value_repairs_it(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    replace_value(tmp_path, "production", "A", base64.b64encode(b"x" * 40).decode())
    s = store(tmp_path)
    s.set("production", "A", "fresh-value")
    s.save()
    assert store(tmp_path).get("production", "A") == "fresh-value"


# --- malformed files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{\n  "version": 1,\n  "envs": {\n    "production": \n  }\n}\n',
            r"secrets\.json:5:3: not valid JSON",
        ),
        ("[]", "expected a JSON object"),
        ('{"version": 2, "envs": {}}', "format version 2 is newer"),
        ('{"version": "1", "envs": {}}', '"version" must be 1'),
        ('{"version": 1, "envs": {}, "extra": 1}', 'exactly the keys "version" and "envs"'),
        ('{"version": 1, "envs": {"production": {"key_id": "XYZ", "secrets": {}}}}', "key_id must be"),
        ('{"version": 1, "envs": {"prod uction": {"key_id": "0011aabb", "secrets": {}}}}', "invalid env"),
        (
            '{"version": 1, "envs": {"p": {"key_id": "0011aabb", "secrets": {"lower": "x"}}}}',
            "invalid secret",
        ),
        ('{"version": 1, "envs": {"p": {"key_id": "0011aabb", "secrets": {"A": 1}}}}', "must be a string"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, text: str | bytes, expected: str) -> None:
    path = secrets_path(tmp_path)
    path.parent.mkdir()
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(SecretsError, match=expected) as caught:
        store(tmp_path)
    assert str(path) in caught.value.message
    assert caught.value.hint
    assert caught.value.exit_code == 2


def test_a_file_changed_since_reading_is_not_overwritten(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    first, second = store(tmp_path), store(tmp_path)
    first.set("production", "B", "from-first")
    first.save()
    on_disk = secrets_path(tmp_path).read_bytes()
    second.set("production", "C", "from-second")
    with pytest.raises(SecretsError, match="changed on disk"):
        second.save()
    assert secrets_path(tmp_path).read_bytes() == on_disk
    assert [p.name for p in secrets_path(tmp_path).parent.iterdir()] == ["secrets.json"]


# --- names and values -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lower", "1ABC", "A-B", "", "A B", "PORT", "ENV", "TAKO_BUILD", "Ä"])
def test_bad_names_are_refused(tmp_path: Path, ring: DictKeyring, name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(SecretsError) as caught:
        store(tmp_path).set("production", name, VALUE)
    assert caught.value.hint
    assert not secrets_path(tmp_path).exists()


def test_good_names() -> None:
    assert all(is_valid_name(n) for n in ("A", "_X", "DATABASE_URL", "S3_KEY_2", "ENVIRONMENT"))


@pytest.mark.parametrize("value", ["", "a\0b"])
def test_unusable_values_are_refused(tmp_path: Path, ring: DictKeyring, value: str) -> None:
    with pytest.raises(SecretsError):
        store(tmp_path).set("production", "A", value)


def test_missing_secret(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    with pytest.raises(SecretsError, match="no secret B in env production"):
        store(tmp_path).get("production", "B")
    with pytest.raises(SecretsError, match="no secret A in env staging"):
        store(tmp_path).get("staging", "A")


# --- keys: the environment variable -----------------------------------------------------------------


def test_key_env_var_name() -> None:
    assert key_env_var("production") == "TAKO_SECRETS_KEY_PRODUCTION"
    assert key_env_var("pr-12") == "TAKO_SECRETS_KEY_PR_12"


def test_env_var_key_decrypts_without_any_keyring(tmp_path: Path, ring: DictKeyring) -> None:
    exported = saved(tmp_path, {("production", "A"): VALUE, ("staging", "B"): "b-value"}).export_key(
        "production"
    )
    no_keyring()
    ci = {"TAKO_SECRETS_KEY_PRODUCTION": f"  {exported}\n"}
    assert load_env_secrets_with(tmp_path, ci, "production") == {"A": VALUE}
    with pytest.raises(SecretsError) as caught:
        load_env_secrets_with(tmp_path, ci, "staging")
    assert "TAKO_SECRETS_KEY_STAGING" in caught.value.render()
    assert "PYTHON_KEYRING_BACKEND" in caught.value.render()


def test_env_var_wins_over_the_keyring(tmp_path: Path, ring: DictKeyring) -> None:
    s = saved(tmp_path, {("production", "A"): VALUE})
    exported = s.export_key("production")
    ring.entries.clear()  # the keyring no longer has it; the env var alone must do
    assert store(tmp_path, {"TAKO_SECRETS_KEY_PRODUCTION": exported}).get("production", "A") == VALUE


def test_another_envs_key_is_named(tmp_path: Path, ring: DictKeyring) -> None:
    s = saved(tmp_path, {("production", "A"): VALUE, ("staging", "B"): "b-value"})
    wrong = {"TAKO_SECRETS_KEY_STAGING": s.export_key("production")}
    with pytest.raises(SecretsError) as caught:
        store(tmp_path, wrong).get("staging", "B")
    message = caught.value.render()
    assert "TAKO_SECRETS_KEY_STAGING" in message
    assert "env staging" in message
    assert "key of env production" in message


def test_a_malformed_env_var_key_is_named_but_never_echoed(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    exported = store(tmp_path).export_key("production")
    for bad in (exported[:-3], "tako1:abc", exported.replace("tako1", "tako9"), exported + "AAAA"):
        with pytest.raises(SecretsError) as caught:
            store(tmp_path, {"TAKO_SECRETS_KEY_PRODUCTION": bad}).get("production", "A")
        assert "TAKO_SECRETS_KEY_PRODUCTION" in caught.value.message
        assert bad.split(":")[-1] not in caught.value.render()


def test_first_set_uses_the_env_var_key_and_leaves_the_keyring_alone(
    tmp_path: Path, ring: DictKeyring
) -> None:
    exported = saved(tmp_path, {("production", "A"): VALUE}).export_key("production")
    ring.entries.clear()
    other = tmp_path / "other"
    s = SecretsStore.open(other, APP, environ={"TAKO_SECRETS_KEY_PRODUCTION": exported})
    s.set("production", "A", VALUE)
    s.save()
    assert ring.entries == {}
    assert s.key_id("production") == exported.split(":")[1]


# --- keys: the keyring ------------------------------------------------------------------------------


def test_without_a_keyring_the_error_names_both_ways_out(tmp_path: Path, use_keyring: None) -> None:
    for backend in ("keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"):
        keyring.set_keyring(keyring.core.load_keyring(backend))
        s = store(tmp_path)
        with pytest.raises(SecretsError) as caught:
            s.set("production", "A", VALUE)
        message = caught.value.render()
        assert "no keyring backend is available" in message
        assert "TAKO_SECRETS_KEY_PRODUCTION" in message
        assert "PYTHON_KEYRING_BACKEND" in message
        with pytest.raises(SecretsError, match="no keyring backend"):
            s.unlock("production")
        assert not secrets_path(tmp_path).exists()


def test_no_keyring_is_fine_when_no_key_is_needed(tmp_path: Path, ring: DictKeyring) -> None:
    s = saved(tmp_path, {("production", "A"): VALUE})
    s.remove("production", "A")
    s.save()
    no_keyring()
    assert load_env_secrets(tmp_path, APP, "production") == {}
    assert load_env_secrets(tmp_path, APP, "never-configured") == {}
    assert store(tmp_path).names("production") == []


def test_a_key_missing_from_the_keyring_says_how_to_import_it(tmp_path: Path, ring: DictKeyring) -> None:
    saved(tmp_path, {("production", "A"): VALUE})
    ring.entries.clear()
    with pytest.raises(SecretsError) as caught:
        store(tmp_path).get("production", "A")
    assert "not in the keyring" in caught.value.message
    assert "key import --env production" in (caught.value.hint or "")


def test_a_wrong_keyring_entry_is_reported(tmp_path: Path, ring: DictKeyring) -> None:
    kid = saved(tmp_path, {("production", "A"): VALUE}).key_id("production")
    other = store(tmp_path / "other")
    other.set("production", "A", VALUE)
    ring.entries[("tako", f"shop/production/{kid}")] = other.export_key("production")
    with pytest.raises(SecretsError, match="does not hold the key"):
        store(tmp_path).get("production", "A")


def test_a_backend_that_drops_writes_is_caught(tmp_path: Path, use_keyring: None) -> None:
    keyring.set_keyring(ForgetfulKeyring())
    with pytest.raises(SecretsError, match="did not keep the key of env production"):
        store(tmp_path).set("production", "A", VALUE)
    assert not secrets_path(tmp_path).exists()


def test_a_plaintext_backend_is_refused_unless_chosen_by_name(
    tmp_path: Path, use_keyring: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = PlaintextKeyring()
    keyring.set_keyring(backend)
    with pytest.raises(SecretsError) as caught:
        store(tmp_path).set("production", "A", VALUE)
    assert "unencrypted" in caught.value.message
    assert "PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring" in (caught.value.hint or "")
    assert backend.entries == {}

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    s = store(tmp_path)
    s.set("production", "A", VALUE)
    assert len(backend.entries) == 1


def test_a_failing_backend_becomes_a_secrets_error(tmp_path: Path, use_keyring: None) -> None:
    class LockedKeyring(DictKeyring):
        def get_password(self, service: str, username: str) -> str | None:
            raise keyring.errors.KeyringLocked("the collection is locked")

    saved_ring = DictKeyring()
    keyring.set_keyring(saved_ring)
    saved(tmp_path, {("production", "A"): VALUE})
    keyring.set_keyring(LockedKeyring())
    with pytest.raises(SecretsError, match="KeyringLocked: the collection is locked"):
        store(tmp_path).get("production", "A")


# --- export and import ------------------------------------------------------------------------------


def test_import_checks_every_value_then_stores(tmp_path: Path, ring: DictKeyring) -> None:
    s = saved(tmp_path, {("production", "A"): VALUE, ("production", "B"): "b", ("staging", "C"): "c"})
    prod, staging = s.export_key("production"), s.export_key("staging")
    entry = ("tako", f"shop/production/{s.key_id('production')}")
    ring.entries.clear()

    with pytest.raises(SecretsError, match="key of env staging"):
        store(tmp_path).import_key("production", staging)
    with pytest.raises(SecretsError, match="not a valid tako key"):
        store(tmp_path).import_key("production", prod[:-2])
    with pytest.raises(SecretsError, match="nothing to check the key against"):
        store(tmp_path).import_key("preview", prod)
    assert ring.entries == {}

    assert store(tmp_path).import_key("production", prod + "\n") == s.key_id("production")
    assert ring.entries[entry] == prod
    assert store(tmp_path).get("production", "B") == "b"


def test_import_refuses_a_key_that_does_not_decrypt_everything(tmp_path: Path, ring: DictKeyring) -> None:
    s = saved(tmp_path, {("production", "A"): VALUE, ("production", "B"): "b-value"})
    prod = s.export_key("production")
    ring.entries.clear()
    replace_value(tmp_path, "production", "B", stored_value(tmp_path, "production", "A"))
    with pytest.raises(SecretsError, match="secret B of env production"):
        store(tmp_path).import_key("production", prod)
    assert ring.entries == {}


def test_export_without_a_key(tmp_path: Path, ring: DictKeyring) -> None:
    with pytest.raises(SecretsError, match="env production has no secrets key yet"):
        store(tmp_path).export_key("production")
