"""The boundaries: tako_core never loads Textual; the agent's zipapp needs only the stdlib; front ends
reach the agent only through the core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tako_core
from tako_core.transport.agent_zipapp import build_zipapp
from tests.agentkit.kit import PY310

CHECK = """
import importlib, pkgutil, sys
import tako_core
for mod in pkgutil.walk_packages(tako_core.__path__, "tako_core."):
    importlib.import_module(mod.name)
loaded = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
print(len([m for m in sys.modules if m.startswith("tako_core")]))
sys.exit(1 if loaded else 0)
"""


def test_core_never_imports_textual() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr or "tako_core loaded textual"
    # The walk really imported the package's modules (a walk over nothing would pass vacuously).
    modules = list(Path(tako_core.__file__).parent.rglob("*.py"))
    assert int(result.stdout.strip()) >= len(modules) // 2


def test_cli_starts_without_textual() -> None:
    code = "import sys, tako_tui.cli; sys.exit('textual' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# Imports every module of the zipapp (argv[1]) with nothing but the stdlib and the zipapp on sys.path.
# The top-level __main__.py is the entry point: importing it would run the agent's command line.
IMPORT_ZIPAPP = """
import importlib, sys, zipfile
pyz = sys.argv[1]
sys.path.insert(0, pyz)
names = [
    name[:-3].replace("/", ".").removesuffix(".__init__")
    for name in zipfile.ZipFile(pyz).namelist()
    if name.endswith(".py") and name != "__main__.py"
]
for name in names:
    importlib.import_module(name)
print(len(names))
"""

SERVER_PYTHONS = [sys.executable] + [str(p) for p in (Path("/usr/bin/python3"), PY310) if p.exists()]


@pytest.mark.parametrize("python", SERVER_PYTHONS)
def test_the_agent_zipapp_needs_only_the_stdlib(python: str, tmp_path: Path) -> None:
    pyz = build_zipapp(tmp_path)
    # -I -S: no site-packages, no user site, no PYTHONPATH, no current directory.
    result = subprocess.run(
        [python, "-I", "-S", "-c", IMPORT_ZIPAPP, str(pyz)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    agent_modules = list((Path(tako_core.__file__).parent / "agent").glob("*.py"))
    assert int(result.stdout) > len(agent_modules)  # the agent's modules, and h11's


def test_front_ends_do_not_import_the_agent() -> None:
    """The TUI gets what it shows through the core (e.g. tako_core.deploy.inspect), never from the
    agent's package or its client's wire types."""
    banned = ("tako_core.agent", "tako_core.transport.agent_client")
    offenders = []
    for path in sorted((Path(__file__).parents[1] / "tako_tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:  # `from tako_core import agent` too
                names = [f"{node.module}.{a.name}" for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(banned)]
    assert offenders == []


def test_the_agent_package_docstring_maps_every_module() -> None:
    import tako_core.agent as agent

    assert agent.__doc__ is not None
    mapped: set[str] = set()
    for line in agent.__doc__.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            names, _, _ = line.strip().partition("  ")
            mapped.update(name.strip() for name in names.split(","))
    package = Path(agent.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    assert mapped == modules
