"""Every option of every command explains itself, and a wrong type is named in words, not a repr."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from onnxrec.cli import COMMANDS, main


def _commands(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    found = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            found += [(f"{name} {sub}", c) for sub, c in _commands(cmd, ctx)]
        else:
            found.append((name, cmd))
    return found


def test_every_option_of_every_command_has_help_text() -> None:
    ctx = click.Context(main)
    commands = _commands(main, ctx)
    assert {name.split()[0] for name, _ in commands} >= set(COMMANDS)
    missing = [
        f"{name} {param.opts[0]}"
        for name, cmd in commands
        for param in cmd.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--epochs", "abc"], "option 'epochs': 'abc' is not an integer"),
        (["train", "--lr", "fast"], "option 'lr': 'fast' is not a number"),
        (["train", "--layers", "a,b"], "option 'layers': 'a,b' is not comma-separated integers"),
        (["serve", "--port", "x"], "option 'port': 'x' is not an integer"),
    ],
)
def test_wrong_option_type_is_one_line_in_words(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {expected}"
    assert "<class" not in result.output
