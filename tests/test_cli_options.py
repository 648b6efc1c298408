"""The options every command shares are spelled the same in every command (walks the real click tree)."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner

from tako_tui.cli import main

ENV_COMMANDS = {
    "config show",
    "deploy",
    "logs",
    "run",
    "status",
    "releases",
    "releases ls",
    "releases rollback",
    "secrets set",
    "secrets get",
    "secrets ls",
    "secrets rm",
    "secrets edit",
    "secrets key new",
    "secrets key export",
    "secrets key import",
    "tls renew",
}


def walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):  # through get_command: `tako` loads its commands on demand
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from walk(sub, (*path, name))


def takes_an_env(param: click.Parameter) -> bool:
    return "env" in (param.name or "") or any("env" in opt for opt in param.opts)


def help_line(path: tuple[str, ...], option: str) -> str:
    """The line of `tako <path> --help` that documents `option`, whitespace collapsed."""
    shown = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    (line,) = [line for line in shown.output.splitlines() if option in line]
    return " ".join(line.split())


def test_every_command_that_takes_an_env_takes_dash_e_and_dash_dash_env_with_one_help() -> None:
    lines: dict[str, str] = {}
    for path, command in walk(main):
        params = [p for p in command.params if takes_an_env(p)]
        if not params:
            continue
        (param,) = params
        assert isinstance(param, click.Option), path
        assert (param.opts, param.secondary_opts, param.metavar) == (["-e", "--env"], [], "ENV"), path
        lines[" ".join(path)] = help_line(path, "--env")
    assert set(lines) == ENV_COMMANDS
    assert set(lines.values()) == {"-e, --env ENV The environment (default: the only one in tako.toml)."}


def test_a_groups_subcommands_live_in_the_groups_module() -> None:
    """`tako servers setup` is found next to `tako servers add`, not attached from elsewhere."""
    for path, command in walk(main):
        if isinstance(command, click.Group) and path:
            for name, sub in command.commands.items():
                assert sub.callback is not None
                assert command.callback is not None
                assert sub.callback.__module__ == command.callback.__module__, (*path, name)
