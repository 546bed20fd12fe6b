"""Command help that the terminal wraps, not the source file.

Typer's rich help prints a docstring's single line breaks as they are in the
command list and in every paragraph after the first, so a sentence wrapped to
fit the source's line length showed broken in its middle at any terminal
width. Here each paragraph becomes one line before typer sees it; paragraphs
(blank-line separated) stay apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def flow(text: str) -> str:
    """Each paragraph of `text` on one line, its words separated by single spaces."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


class FlowingTyper(typer.Typer):
    """A typer.Typer whose own help and whose commands' help (given or docstring) flow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("help"), str):
            kwargs["help"] = flow(kwargs["help"])
        super().__init__(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command

        def decorator(function: F) -> F:
            text = kwargs.get("help") or inspect.getdoc(function)
            settings = {**kwargs, "help": flow(text) if text else None}
            return register(*args, **settings)(function)

        return decorator
