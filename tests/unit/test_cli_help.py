"""`--help` reads cleanly: every paragraph of every command's help is one line when the
terminal is wide enough, so only the terminal's own wrap ever breaks a sentence."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from syncengine.cli import app
from syncengine.helptext import flow

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ROOT = typer.main.get_command(app)


def subcommands(command: Any) -> dict[str, Any]:
    """A group's commands by name (typer vendors its own click: no isinstance check)."""
    found: dict[str, Any] = getattr(command, "commands", {})
    return found


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command path of the group itself and of every command under it."""
    found = [path]
    for name, command in subcommands(group).items():
        found += commands(command, (*path, name))
    return found


def command_at(path: tuple[str, ...]) -> Any:
    command: Any = ROOT
    for name in path:
        command = subcommands(command)[name]
    return command


def paragraphs(text: str | None) -> list[str]:
    """The paragraphs of a help text as a reader should see them: whole, words spaced."""
    return [" ".join(p.split()) for p in inspect.cleandoc(text or "").split("\n\n") if p.strip()]


def expected(path: tuple[str, ...]) -> list[str]:
    """Every paragraph of the command's help, of its parameters' help, and the first
    paragraph of each subcommand (the command list shows that)."""
    command = command_at(path)
    texts = paragraphs(command.help)
    texts += [text for p in command.params for text in paragraphs(getattr(p, "help", None))]
    texts += [paragraphs(sub.help)[0] for sub in subcommands(command).values() if sub.help]
    return texts


def rendered_lines(path: tuple[str, ...], columns: int) -> list[str]:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return [" ".join(ANSI.sub("", line).strip("│ ").split()) for line in result.output.splitlines()]


@pytest.mark.parametrize("path", commands(ROOT), ids=lambda path: " ".join(path) or "syncengine")
def test_every_paragraph_of_help_is_one_line_on_a_wide_terminal(path: tuple[str, ...]) -> None:
    texts = expected(path)
    # Wide enough for the longest paragraph beside the command list's name column, so a
    # line break inside a paragraph can only come from the help text itself.
    columns = max(200, max(len(text) for text in texts) + 60)
    lines = rendered_lines(path, columns)
    broken = [text for text in texts if not any(text in line for line in lines)]
    assert broken == [], "\n".join(lines)


def test_flow_joins_the_lines_of_a_paragraph_and_keeps_paragraphs_apart() -> None:
    text = """First line
        goes on here.

        Second   paragraph,
        also wrapped.
    """
    assert flow(text) == "First line goes on here.\n\nSecond paragraph, also wrapped."
