"""tako_core is headless: importing every one of its modules must not load Textual."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tako_core

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
