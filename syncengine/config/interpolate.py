"""`${VAR}` and `${VAR:-default}` substitution over an already-parsed YAML tree.

Substituting after parsing means a variable's value is always one scalar: it
can never add keys or change the document's structure. `$$` writes a `$`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}")

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class MissingVariable:
    path: Path
    name: str
    bad_syntax: bool = False


def interpolate(
    tree: Any, env: Mapping[str, str], path: Path = ()
) -> tuple[Any, list[MissingVariable]]:
    problems: list[MissingVariable] = []

    def walk(node: Any, where: Path) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, (*where, str(key))) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*where, index)) for index, value in enumerate(node)]
        if isinstance(node, str):
            return _substitute(node, env, where, problems)
        return node

    return walk(tree, path), problems


def _substitute(
    text: str, env: Mapping[str, str], where: Path, problems: list[MissingVariable]
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(3) is not None:
            problems.append(MissingVariable(where, match.group(3), bad_syntax=True))
            return ""
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            problems.append(MissingVariable(where, name))
            return ""
        return value

    return _PATTERN.sub(replace, text)
