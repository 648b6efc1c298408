"""`tako secrets` end to end: real `tako` processes, a real file-backed keyring backend.

The backend (tests/secrets_file_keyring.py) is selected the way a user would select one:
`PYTHON_KEYRING_BACKEND=module.Class`, with its module on PYTHONPATH.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TAKO = Path(sys.executable).parent / "tako"
FILE_BACKEND = "secrets_file_keyring.FileKeyring"
NO_BACKEND = "keyring.backends.fail.Keyring"
TAKO_TOML = """\
name = "shop"

[envs.production]
servers = ["web-1"]

[envs.staging]
servers = ["web-2"]
"""
DB_URL = "postgres://shop:correct-horse-battery@db.internal/shop"
API_TOKEN = "tok_live_9f8e7d6c5b4a"


@dataclass
class Machine:
    """One machine's view: its own HOME, TAKO_HOME and keyring, sharing the project directory."""

    project: Path
    home: Path
    backend: str = FILE_BACKEND
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def keyring_file(self) -> Path:
        return self.home / "keyring.json"

    def env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TAKO_", "PYTHON_KEYRING", "XDG_")) and k not in ("HOME", "PYTHONPATH")
        }
        return {
            **base,
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "TAKO_HOME": str(self.home / "tako"),
            "PYTHONPATH": str(TESTS),
            "PYTHON_KEYRING_BACKEND": self.backend,
            "TAKO_TEST_KEYRING_FILE": str(self.keyring_file),
            **self.extra,
        }

    def tako(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(TAKO), "secrets", *args],
            cwd=self.project,
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str, input: str = "") -> str:
        result = self.tako(*args, input=input)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def fails(self, *args: str, input: str = "") -> str:
        """Runs a command that must be refused as bad input (exit 2); returns its stderr."""
        result = self.tako(*args, input=input)
        assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("error: ")
        assert "hint: " in result.stderr
        return result.stderr


def new_laptop(root: Path) -> Machine:
    project = root / "app"
    project.mkdir()
    (project / "tako.toml").write_text(TAKO_TOML)
    return Machine(project, root / "laptop")


@pytest.fixture
def laptop(tmp_path: Path) -> Machine:
    return new_laptop(tmp_path)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Machine:
    """Secrets set once through the CLI; each test gets a copy (processes are the slow part)."""
    laptop = new_laptop(tmp_path_factory.mktemp("seeded"))
    laptop.ok("set", "DB_URL", "--env", "production", input=DB_URL + "\n")
    laptop.ok("set", "API_TOKEN", "--env", "production", input=API_TOKEN)
    laptop.ok("set", "DB_URL", "--env", "staging", input="sqlite:///staging.db\n")
    return laptop


@pytest.fixture
def with_secrets(seeded: Machine, tmp_path: Path) -> Machine:
    shutil.copytree(seeded.project, tmp_path / "app")
    shutil.copytree(seeded.home, tmp_path / "laptop")
    return Machine(tmp_path / "app", tmp_path / "laptop")


def secrets_doc(project: Path) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
    doc: dict[str, dict[str, dict[str, dict[str, str]]]] = json.loads(
        (project / ".tako" / "secrets.json").read_text()
    )
    return doc


def write_doc(project: Path, doc: object) -> None:
    (project / ".tako" / "secrets.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_set_get_ls_rm_round_trip_through_a_real_keyring(with_secrets: Machine) -> None:
    laptop = with_secrets
    assert laptop.ok("get", "DB_URL", "--env", "production") == DB_URL + "\n"
    assert laptop.ok("get", "API_TOKEN", "--env", "production") == API_TOKEN + "\n"
    assert laptop.ok("get", "DB_URL", "--env", "staging") == "sqlite:///staging.db\n"

    doc = secrets_doc(laptop.project)
    kids = {env: doc["envs"][env]["key_id"] for env in ("production", "staging")}
    listed = json.loads(laptop.ok("ls", "--json"))
    assert listed == {
        "envs": {
            "production": {"key_id": kids["production"], "names": ["API_TOKEN", "DB_URL"]},
            "staging": {"key_id": kids["staging"], "names": ["DB_URL"]},
        }
    }
    assert laptop.ok("ls", "--env", "production") == "API_TOKEN\nDB_URL\n"
    assert laptop.ok("ls") == (
        f"production (key {kids['production']})\n  API_TOKEN\n  DB_URL\n"
        f"staging (key {kids['staging']})\n  DB_URL\n"
    )

    # One keyring entry per env, named app/env/key_id; the file holds no key.
    ring = json.loads(laptop.keyring_file.read_text())
    assert sorted(ring) == sorted(f"tako\nshop/{env}/{kid}" for env, kid in kids.items())
    text = (laptop.project / ".tako" / "secrets.json").read_text()
    for exported in ring.values():
        assert exported.split(":")[2] not in text

    assert "without confirmation" in laptop.fails("rm", "API_TOKEN", "--env", "production")
    laptop.ok("rm", "API_TOKEN", "--env", "production", "--yes")
    assert laptop.ok("ls", "--env", "production") == "DB_URL\n"
    assert "no secret API_TOKEN in env production" in laptop.fails("get", "API_TOKEN", "--env", "production")


def test_every_secrets_command_takes_dash_e(with_secrets: Machine) -> None:
    """`-e` is `--env` in every command (once it was only deploy's: "No such option: -e")."""
    laptop = with_secrets
    laptop.ok("set", "SHORT", "-e", "production", input="via-dash-e")
    assert laptop.ok("get", "SHORT", "-e", "production") == "via-dash-e\n"
    assert laptop.ok("ls", "-e", "production") == "API_TOKEN\nDB_URL\nSHORT\n"
    exported = laptop.ok("key", "export", "-e", "production")
    laptop.ok("rm", "SHORT", "-e", "production", "--yes")
    assert laptop.ok("ls", "-e", "production") == "API_TOKEN\nDB_URL\n"
    laptop.ok("key", "import", "-e", "production", input=exported)
    assert "no environment 'prod'" in laptop.fails("get", "DB_URL", "-e", "prod")


def test_the_file_holds_no_value_in_plain_text_base64_or_hex(with_secrets: Machine) -> None:
    text = (with_secrets.project / ".tako" / "secrets.json").read_text()
    for value in (DB_URL, API_TOKEN, "sqlite:///staging.db"):
        raw = value.encode()
        for form in (
            value,
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            raw.hex(),
        ):
            assert form not in text
    assert text.endswith("}\n")


def test_a_flipped_byte_or_a_moved_value_makes_get_fail_clearly(with_secrets: Machine) -> None:
    laptop = with_secrets
    doc = secrets_doc(laptop.project)
    prod = doc["envs"]["production"]["secrets"]
    original = prod["DB_URL"]

    blob = bytearray(base64.b64decode(original))
    blob[20] ^= 0x04
    prod["DB_URL"] = base64.b64encode(blob).decode()
    write_doc(laptop.project, doc)
    stderr = laptop.fails("get", "DB_URL", "--env", "production")
    assert "secret DB_URL of env production" in stderr
    assert DB_URL not in stderr

    prod["DB_URL"] = prod["API_TOKEN"]  # a valid ciphertext, under the right key, of another name
    write_doc(laptop.project, doc)
    stderr = laptop.fails("get", "DB_URL", "--env", "production")
    assert "secret DB_URL of env production" in stderr
    assert API_TOKEN not in stderr
    assert laptop.ok("get", "API_TOKEN", "--env", "production") == API_TOKEN + "\n"


def test_an_exported_key_opens_its_env_and_nothing_else(with_secrets: Machine, tmp_path: Path) -> None:
    exported = with_secrets.ok("key", "export", "--env", "production").strip()
    kid = secrets_doc(with_secrets.project)["envs"]["production"]["key_id"]
    assert exported.startswith(f"tako1:{kid}:")

    ci = Machine(with_secrets.project, tmp_path / "ci", backend=NO_BACKEND)
    ci.extra["TAKO_SECRETS_KEY_PRODUCTION"] = exported
    assert ci.ok("get", "DB_URL", "--env", "production") == DB_URL + "\n"
    assert ci.ok("ls", "--env", "staging") == "DB_URL\n"  # names need no key

    stderr = ci.fails("get", "DB_URL", "--env", "staging")
    assert "no keyring backend is available" in stderr
    assert "TAKO_SECRETS_KEY_STAGING" in stderr
    assert "PYTHON_KEYRING_BACKEND" in stderr

    ci.extra["TAKO_SECRETS_KEY_STAGING"] = exported
    stderr = ci.fails("get", "DB_URL", "--env", "staging")
    assert "TAKO_SECRETS_KEY_STAGING" in stderr
    assert "key of env production" in stderr
    assert exported.split(":")[2] not in stderr

    # And nothing was written on the keyring-less machine.
    assert not ci.keyring_file.exists()


def test_key_import_verifies_before_storing(with_secrets: Machine, tmp_path: Path) -> None:
    prod = with_secrets.ok("key", "export", "--env", "production")
    staging = with_secrets.ok("key", "export", "--env", "staging")
    desktop = Machine(with_secrets.project, tmp_path / "desktop")

    assert "not in the keyring" in desktop.fails("get", "DB_URL", "--env", "production")
    stderr = desktop.fails("key", "import", "--env", "production", input=staging)
    assert "is not the key of env production" in stderr
    assert "nothing was stored" in stderr
    assert not desktop.keyring_file.exists()

    desktop.ok("key", "import", "--env", "production", input=prod)
    assert desktop.ok("get", "DB_URL", "--env", "production") == DB_URL + "\n"
    assert "not in the keyring" in desktop.fails("get", "DB_URL", "--env", "staging")


def test_bad_input_exits_2_with_a_hint(laptop: Machine) -> None:
    assert "which one?" in laptop.fails("set", "DB_URL", input="x-value")
    assert "no environment 'prod'" in laptop.fails("set", "DB_URL", "--env", "prod", input="x-value")
    assert "invalid secret name" in laptop.fails("set", "db-url", "--env", "production", input="x-value")
    assert "empty value" in laptop.fails("set", "DB_URL", "--env", "production", input="\n")
    assert "no secret NOPE" in laptop.fails("rm", "NOPE", "--env", "production", "--yes")

    tako_dir = laptop.project / ".tako"
    tako_dir.mkdir()
    (tako_dir / "secrets.json").write_text('{\n  "version": 1,\n  "envs": {,}\n}\n')
    stderr = laptop.fails("ls")
    assert "error: .tako/secrets.json:3:12: not valid JSON" in stderr


def on_terminal(machine: Machine, args: list[str], answers: list[str]) -> tuple[int, str]:
    """Runs `tako secrets ARGS` on a real pseudo-terminal, typing each answer after a prompt.

    Returns the exit code and everything the terminal showed.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as in an interactive shell
        try:
            os.chdir(machine.project)
            os.execve(TAKO, [str(TAKO), "secrets", *args], machine.env())
        finally:
            os._exit(127)
    shown = b""
    pending = list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            # Click writes "Prompt:", then getpass turns echo off (flushing typed-ahead input) and
            # writes " ": only then may the answer be typed.
            if pending and shown.endswith(b": "):
                os.write(fd, pending.pop(0).encode() + b"\r")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_set_on_a_terminal_uses_a_hidden_prompt_with_confirmation(laptop: Machine) -> None:
    code, shown = on_terminal(laptop, ["set", "DB_URL", "--env", "production"], [DB_URL, DB_URL])
    assert code == 0, shown
    assert "Value for DB_URL (production):" in shown
    assert "Repeat for confirmation:" in shown
    assert DB_URL not in shown  # never echoed
    assert laptop.ok("get", "DB_URL", "--env", "production") == DB_URL + "\n"

    code, shown = on_terminal(laptop, ["rm", "DB_URL", "--env", "production"], ["y"])
    assert code == 0, shown
    assert "Remove DB_URL from env production?" in shown
    assert laptop.ok("ls", "--env", "production") == ""


def test_a_machine_without_a_keyring_starts_an_env_with_key_new(tmp_path: Path) -> None:
    """CI-only machines: `key new` gives a key; exported as the env var, set and get work with no keyring."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "tako.toml").write_text('name = "shop"\nstart = "x"\n[envs.production]\nservers = ["a"]\n')
    env = {
        **os.environ,
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "TAKO_HOME": str(tmp_path),
    }

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TAKO), *args], cwd=project, env=env, input=stdin, capture_output=True, text=True, check=False
        )

    refused = run("secrets", "set", "API_TOKEN", stdin="tok-123456\n")
    assert refused.returncode != 0
    next_step = 'eval "$(tako secrets key new -e production)"'
    assert next_step in refused.stderr  # the exact next step
    assert "apt install gnome-keyring" in refused.stderr  # what to install for a keyring

    # The next step as a person takes it: eval'd by a shell, then set in the same shell.
    tako = shlex.quote(str(TAKO))
    shell = f"{next_step.replace('tako', tako, 1)} && printf 'tok-123456\\n' | {tako} secrets set API_TOKEN"
    shell += " && echo $TAKO_SECRETS_KEY_PRODUCTION"
    took = subprocess.run(
        ["sh", "-c", shell], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    assert took.returncode == 0, took.stderr
    env["TAKO_SECRETS_KEY_PRODUCTION"] = took.stdout.strip()
    assert run("secrets", "key", "new").stdout.startswith(
        "export TAKO_SECRETS_KEY_PRODUCTION="
    )  # the only env
    got = run("secrets", "get", "API_TOKEN")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "tok-123456\n"
    assert "tok-123456" not in (project / ".tako" / "secrets.json").read_text()


def test_set_warns_of_newlines_and_surrounding_whitespace(laptop: Machine) -> None:
    def warnings(value: str) -> str:
        result = laptop.tako("set", "PEM", "--env", "production", input=value)
        assert result.returncode == 0, result.stderr
        return "\n".join(line for line in result.stderr.splitlines() if line.startswith("warning:"))

    assert "spans lines" in warnings("-----BEGIN KEY-----\nabcd\n-----END KEY-----\n")
    assert "whitespace" in warnings(" padded-value")
    assert warnings("plain-value\n") == ""  # one trailing newline is how `echo` ends a value
