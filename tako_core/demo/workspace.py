"""The demo's workspace: a temporary directory holding the servers, TAKO_HOME, the app and its database.

tako-demo-XXXX/
  home/         TAKO_HOME (servers.toml, client key, known_hosts)
  hosts/        SSH host keys
  servers/      each server's root
  app/          tako.toml, server.py, migrate.py, .tako/secrets.json
  shared/       demo.sqlite3: the ONE database every server uses
  cache/        the artifact cache (kept out of the user's own)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tako_core.config import Server
from tako_core.errors import BadInput
from tako_core.secrets import SecretsStore, key_env_var, new_exported_key

WORKSPACE_PREFIX = "tako-demo-"
APP = "hello"
ENV = "production"
SECRET_NAME = "DEMO_DB_PASSWORD"
SECRET_VALUE = "correct-horse-battery-staple"  # shown masked in the release output
MIGRATED_SCHEMA = 3  # sample-app/migrate.py's migrations
FAILING_MIGRATION = 3
# Not a package (the hyphen): these files are the app the demo deploys, never imported by tako.
SAMPLE = Path(__file__).parent / "sample-app"
# ROOT/run/tako.sock must fit in a unix socket address (108 bytes): leave room under the workspace.
_MAX_WORKSPACE_PATH = 60


def create_workspace() -> Path:
    directory = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX))
    if len(str(directory)) > _MAX_WORKSPACE_PATH:
        shutil.rmtree(directory, ignore_errors=True)
        raise BadInput(
            f"the temporary directory {directory.parent} has too long a path for the agents' sockets",
            hint="run with TMPDIR=/tmp",
        )
    return directory


def database_path(workspace: Path) -> Path:
    return workspace / "shared" / "demo.sqlite3"


def write_app(
    workspace: Path, servers: list[Server], *, fail_release: bool, migration_pause: float
) -> tuple[Path, dict[str, str]]:
    """The sample app with its tako.toml and one secret; returns tako.toml and the environment holding
    the secrets key (`TAKO_SECRETS_KEY_PRODUCTION`: no keyring needed)."""
    app = workspace / "app"
    app.mkdir()
    for name in ("server.py", "migrate.py"):
        shutil.copyfile(SAMPLE / name, app / name)
    database_path(workspace).parent.mkdir()
    names = ", ".join(f'"{s.name}"' for s in servers)
    failing = f'DEMO_FAIL_MIGRATION = "{FAILING_MIGRATION}"\n' if fail_release else ""
    config = app / "tako.toml"
    config.write_text(
        f'name = "{APP}"\n'
        'start = "python3 server.py"\n'
        "# Runs once, on the leader (the first server below), before any server starts the new code.\n"
        'release = "python3 migrate.py"\n'
        "\n[vars]\n"
        f'DEMO_DATABASE = "{database_path(workspace)}"\n'
        f'DEMO_MIGRATION_PAUSE = "{migration_pause}"\n'
        f"{failing}"
        # No `route`: the demo is reached by each server's address, so the app takes any Host.
        f"\n[envs.{ENV}]\nservers = [{names}]\n"
    )
    environ = {key_env_var(ENV): new_exported_key()}
    store = SecretsStore.open(app, APP, environ=environ)
    store.set(ENV, SECRET_NAME, SECRET_VALUE)
    store.save()
    return config, environ
