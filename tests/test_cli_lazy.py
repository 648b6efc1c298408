"""`tako` starts fast: no command module (nor asyncssh, cryptography, Textual) is imported until a command
runs or shows its help, `tako --help` lists every command from a static table, and the process ends
without the interpreter's teardown once its output is flushed."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from tako_tui.cli import COMMANDS, main

HEAVY = ("asyncssh", "cryptography", "textual", "tako_tui.commands", "tako_core.deploy")


def loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in result.stdout.split() if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]


def test_importing_the_cli_loads_no_command_nor_asyncssh_textual_or_cryptography() -> None:
    assert loaded_after("import tako_tui.cli") == []
    # The probe sees imports: a command's module does pull them in.
    assert "tako_core.deploy" in loaded_after("import tako_tui.commands.deploy")


def test_a_deploy_imports_asyncssh_only_to_connect() -> None:
    """asyncssh is imported by `Connection.open` (in a thread, beside the build), not at the start."""
    assert not [m for m in loaded_after("import tako_tui.commands.deploy") if m.startswith("asyncssh")]
    code = "import asyncio\nfrom tako_core.transport.sshlib import load\nasyncio.run(load())"
    assert "asyncssh" in loaded_after(code)


def test_help_lists_every_command_without_importing_one() -> None:
    code = "from tako_tui.cli import invoke\ninvoke(['--help'])"
    assert loaded_after(code) == []
    shown = CliRunner().invoke(main, ["--help"])
    listed = shown.output.split("Commands:")[1]
    assert [line.split()[0] for line in listed.strip().splitlines()] == sorted(COMMANDS)


def test_the_static_table_matches_the_real_commands() -> None:
    ctx = click.Context(main)
    for name, (_, _, short_help) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == short_help, name


def test_the_process_exits_with_the_commands_code_and_all_its_output_and_no_teardown() -> None:
    """os._exit skips the teardown (here: an atexit handler) but never the output, even through a pipe."""
    code = "import atexit, sys\natexit.register(print, 'teardown')\nsys.argv[1:] = {args!r}\n"
    code += "from tako_tui.cli import run\nrun()"
    shown = subprocess.run(
        [sys.executable, "-c", code.format(args=["--help"])], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[-1].split()[0] == max(COMMANDS)  # the whole listing, flushed
    assert "teardown" not in shown.stdout
    wrong = subprocess.run(
        [sys.executable, "-c", code.format(args=["deploy", "--no-such-flag"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (wrong.returncode, wrong.stdout) == (2, "")
    assert "No such option '--no-such-flag'" in wrong.stderr
