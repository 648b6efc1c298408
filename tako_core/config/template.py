"""`tako init`: a commented tako.toml for the project in a folder (Python, Node, Bun or generic)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tako_core.errors import BadInput

from .files import write_atomic
from .schema import Invalid, expect_label


@dataclass(frozen=True)
class Project:
    """What `tako init` guessed about a folder: the preset and starting commands."""

    preset: str | None
    build: str | None
    install: str | None
    start: str
    release_example: str
    install_inputs: tuple[str, ...] = ()  # what the install reads besides the well-known lockfiles


def init_config(path: Path, name: str | None = None) -> Project:
    """Write a new tako.toml at `path`; an existing file is never overwritten."""
    if path.exists():
        raise BadInput(
            f"{path} already exists",
            hint="edit it, or remove it first to start over (tako init never overwrites)",
        )
    folder = path.parent.resolve()
    app = name if name is not None else app_name_for(folder)
    try:
        expect_label(app, ("name",), "app")
    except Invalid as err:
        raise BadInput(f"--name: {err.message}", hint=err.hint) from None
    project = detect(folder)
    write_atomic(path, render(app, project))
    return project


def app_name_for(folder: Path) -> str:
    """The folder's name made into a DNS label ("My Shop" → "my-shop")."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.name.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"app-{name}".rstrip("-")
    return name[:63].rstrip("-")


def detect(folder: Path) -> Project:
    if (folder / "bun.lockb").exists() or (folder / "bun.lock").exists():
        return Project("bun", None, "bun install --production", "bun run start", "bun run migrate")
    if (folder / "package.json").exists():
        return _node(folder)
    if (folder / "requirements.txt").exists() or (folder / "pyproject.toml").exists():
        return _python(folder)
    for entry in ("app.py", "main.py"):  # a lone script: Python, with nothing to install
        if (folder / entry).is_file():
            return Project("python", None, None, f"python3 {entry}", "python3 migrate.py")
    return Project(None, None, None, "./server --port $PORT", "./migrate")


def _python(folder: Path) -> Project:
    requirements = "-r requirements.txt" if (folder / "requirements.txt").exists() else "."
    migrate = (
        ".venv/bin/python manage.py migrate"
        if (folder / "manage.py").exists()
        else ".venv/bin/alembic upgrade head"
    )
    # uv where the server has it (UV_CACHE_DIR is the app's own, as PIP_CACHE_DIR), pip otherwise; both
    # into a venv of the server's python3.
    uv = f"uv venv -q --python python3 .venv && uv pip install -q --python .venv/bin/python {requirements}"
    pip = f"python3 -m venv .venv && .venv/bin/pip install {requirements}"
    return Project(
        "python",
        None,
        f"if command -v uv >/dev/null; then {uv}; else {pip}; fi",
        ".venv/bin/gunicorn --bind 127.0.0.1:$PORT app:app",
        migrate,
        # `pip install .` installs the project's own code too: reuse that install only while it is unchanged.
        () if requirements.startswith("-r") else ("**/*.py",),
    )


def _node(folder: Path) -> Project:
    try:
        scripts = json.loads((folder / "package.json").read_text(encoding="utf-8")).get("scripts", {})
    except (OSError, ValueError, AttributeError):
        scripts = {}  # an unreadable package.json only costs the guesses below
    scripts = scripts if isinstance(scripts, dict) else {}
    install = "npm ci --omit=dev" if (folder / "package-lock.json").exists() else "npm install --omit=dev"
    return Project(
        "node",
        "npm ci && npm run build" if "build" in scripts else None,
        install,
        "npm start" if "start" in scripts else "node server.js",
        "npm run migrate",
    )


def render(app: str, project: Project) -> str:
    def line(key: str, value: str | None, why: str) -> str:
        setting = f"{key} = {_quote(value)}" if value else f"# {key} = {_quote('...')}"
        return f"# {why}\n{setting}\n"

    preset = (
        f"preset = {_quote(project.preset)}\n" if project.preset else '# preset = "python"  # or node, bun\n'
    )
    return (
        "# tako.toml: how tako builds, ships and runs this app.\n"
        "# build runs here; install, release and start run on each server in the release folder,\n"
        "# all with `sh -c`, so $PORT and other variables expand as in a Procfile.\n"
        f"name = {_quote(app)}\n"
        f"{preset}\n"
        + line("build", project.build, "Runs on this machine before the upload (optional).")
        + "\n"
        + line("install", project.install, "Installs production dependencies on each server.")
        + (
            "# Reused while it and the files it reads are unchanged: the usual lockfiles, and these.\n"
            f"install_inputs = [{', '.join(_quote(i) for i in project.install_inputs)}]\n"
            if project.install_inputs
            else ""
        )
        + "\n"
        + line("start", project.start, "Starts one instance; it must serve HTTP on 127.0.0.1:$PORT.")
        + "\n"
        "# Runs once per deploy on the leader (the first server of the environment) before any new\n"
        "# instance starts, e.g. database migrations. Leave it out for none.\n"
        f"# release = {_quote(project.release_example)}\n"
        '# release_timeout = "10m"   # seconds, or "90s", "10m", "1h"\n'
        '# health_path = "/"         # probed before an instance gets traffic\n'
        "\n"
        "[vars]\n"
        "# Variables every environment gets. Secrets go in `tako secrets set`, not here.\n"
        '# LOG_LEVEL = "info"\n'
        "\n"
        "[envs.production]\n"
        'route = "example.com"\n'
        "# Names from `tako servers ls`; the first one is the leader.\n"
        'servers = ["web-1"]\n'
        '# release = ""   # overrides the top-level release here; "" = none in this environment\n'
        "# instances = 2  # instances per server\n"
        "\n"
        "# [vars.production]\n"
        '# LOG_LEVEL = "warning"\n'
    )


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(text, ensure_ascii=False)
