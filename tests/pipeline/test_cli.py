"""Every option of every `lesionpipe` command says what it is for in --help."""

from __future__ import annotations

import click
import pytest

from pipeline.cli import main


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += commands(command, f"{prefix}{name} ")
    return found


@pytest.mark.parametrize("name, command", commands(main), ids=[name for name, _ in commands(main)])
def test_every_option_has_help(name, command):
    undocumented = [
        p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]
    assert undocumented == [], f"lesionpipe {name}: options without help"
    assert (command.help or "").strip(), f"lesionpipe {name} has no description"
