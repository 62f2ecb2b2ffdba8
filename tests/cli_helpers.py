"""The `mashup` command's verbs and their flags, as the CLI tests look them up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from mashup.cli import app


def cli_commands() -> Iterator[tuple[str, Any]]:
    """Each command as typed (``select``, ``switch train``) with its click command."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for sub_name, sub in getattr(command, "commands", {name: command}).items():
            yield (name if sub is command else f"{name} {sub_name}"), sub


def command_flags(command: Any) -> set[str]:
    """The long flags a command takes, --help included."""
    return {flag for param in command.params for flag in param.opts if flag.startswith("--")} | {"--help"}
