"""`${VAR}`, `${VAR:-default}` and `${file:PATH}` substitution over an already-parsed
YAML tree.

Substituting after parsing means a variable's value is always one scalar: it
can never add keys or change the document's structure. `$$` writes a `$`.
`${file:/run/secrets/name}` reads a Docker or Kubernetes secret file (one trailing
newline dropped); a relative PATH is taken from the configuration file's folder.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

_PATTERN = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{file:([^}]+)\}|\$\{([^}]*)\}"
)

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class MissingVariable:
    path: Path
    name: str
    bad_syntax: bool = False
    problem: str = ""
    """Why a `${file:...}` could not be used (the whole message; the name is the path)."""


def interpolate(
    tree: Any, env: Mapping[str, str], path: Path = (), base: FsPath | None = None
) -> tuple[Any, list[MissingVariable]]:
    problems: list[MissingVariable] = []

    def walk(node: Any, where: Path) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, (*where, str(key))) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*where, index)) for index, value in enumerate(node)]
        if isinstance(node, str):
            return _substitute(node, env, where, problems, base or FsPath.cwd())
        return node

    return walk(tree, path), problems


def _substitute(
    text: str,
    env: Mapping[str, str],
    where: Path,
    problems: list[MissingVariable],
    base: FsPath,
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(3) is not None:
            return _secret_file(base / match.group(3).strip(), where, problems)
        if match.group(4) is not None:
            problems.append(MissingVariable(where, match.group(4), bad_syntax=True))
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


def _secret_file(path: FsPath, where: Path, problems: list[MissingVariable]) -> str:
    """A secret mounted as a file. One readable by every user on the machine is refused:
    the secret would be no secret there, and saying so beats finding out in an audit."""
    try:
        mode = path.stat().st_mode
        if mode & stat.S_IROTH:
            problems.append(
                MissingVariable(
                    where,
                    str(path),
                    problem=f"secret file {path} is readable by every user (mode "
                    f"{stat.S_IMODE(mode):04o}); chmod o-r it",
                )
            )
            return ""
        value = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(
            MissingVariable(where, str(path), problem=f"secret file {path} does not exist")
        )
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problems.append(
            MissingVariable(where, str(path), problem=f"secret file {path}: cannot read: {why}")
        )
        return ""
    return value.removesuffix("\n").removesuffix("\r")
