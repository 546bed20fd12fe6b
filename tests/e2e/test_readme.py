"""The README is what a new user tries first: every `syncengine ...` command it shows must
be a real command with real options, and the examples of "Operating it" must run against
the sandbox with the exit codes and output shown, so the two cannot drift apart again."""

from __future__ import annotations

import os
import pty
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from connectors.kit.serving import free_port
from syncengine.cli import app
from syncengine.sandbox import Sandbox, sandboxed

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TREE = typer.main.get_command(app)
BOXES = re.compile("[\u2500-\u257f]")
"""Box-drawing characters: the README's tables drop rich's borders."""
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def mentioned() -> list[tuple[int, str]]:
    """Every command line the README shows: indented and fenced code lines that start
    with `syncengine` (or `.venv/bin/syncengine`, or `$ syncengine`), and inline code that
    does; each with its line number."""
    found = []
    fenced = False
    for number, line in enumerate(README.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        code = line.removeprefix("$ ") if fenced else line.removeprefix("    ")
        if (fenced or line.startswith("    ")) and re.match(r"(\.venv/bin/)?syncengine( |$)", code):
            found.append((number, code.split("#", 1)[0].strip()))
        found += [(number, span) for span in re.findall(r"`(syncengine [^`]*)`", line)]
    return found


def options_of(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {
        "--help"
    }


def unknown_parts(words: list[str]) -> list[str]:
    """What in one shown command line the CLI does not have. `a | b | c` lists
    alternative subcommands; `[...]` marks an optional part; `...` elides the rest."""
    command: Any = TREE
    parent: Any = None
    wrong: list[str] = []
    alternatives = False
    for word in words[1:]:
        word = word.strip("[]")
        subcommands: dict[str, Any] = getattr(command, "commands", {})
        if word in ("", "...") or word.startswith("<"):
            continue
        if word == "|":
            alternatives = True
            continue
        if word.startswith("-"):
            if word.split("=", 1)[0] not in options_of(command):
                wrong.append(f"option {word} of {command.name}")
            continue
        if alternatives and parent is not None:
            if word not in getattr(parent, "commands", {}):
                wrong.append(f"command {word} under {parent.name}")
            alternatives = False
            continue
        if subcommands:
            if word not in subcommands:
                wrong.append(f"command {word} under {command.name}")
                return wrong
            parent, command = command, subcommands[word]
    return wrong


def test_every_command_and_option_the_readme_mentions_exists() -> None:
    lines = mentioned()
    assert len(lines) > 30, "the README's command lines were not found"
    wrong = [
        f"README.md:{number}: {line}: {part}"
        for number, line in lines
        for part in unknown_parts(shlex.split(line.replace("|", " | ")))
    ]
    assert wrong == []


def test_a_wrong_command_or_option_is_caught() -> None:
    assert unknown_parts(["syncengine", "plan", "--pipelin", "P"]) != []
    assert unknown_parts(["syncengine", "dlq", "list", "|", "purge"]) != []
    assert unknown_parts(["syncengine", "jobs", "list", "-c", "x", "[--all]"]) == []


# "Operating it", run for real.


def operating_section() -> str:
    start = README.index("## Operating it")
    return README[start : README.index("\n## ", start + 1)]


def examples(section: str) -> Iterator[tuple[str, list[str]]]:
    """Each `$ syncengine ...` of the section's plain fenced blocks, with the lines shown
    after it."""
    command, shown, fence = "", list[str](), None
    for line in section.splitlines():
        if line.startswith("```"):
            fence = line if fence is None else None
            continue
        if fence != "```":
            continue
        if line.startswith("$ "):
            if command:
                yield command, shown
            command, shown = line.removeprefix("$ ").split("#", 1)[0].strip(), []
        elif command:
            shown.append(line)
    if command:
        yield command, shown


def flat(line: str) -> str:
    return " ".join(BOXES.sub(" ", line).split())


def missing_lines(shown: list[str], printed: str) -> list[str]:
    """The shown lines not found, in order, in what was printed (table borders and
    spacing aside; `...` inside a line stands for what changes from run to run)."""
    actual = [flat(line) for line in printed.splitlines()]
    at, missing = 0, []
    for line in shown:
        wanted = flat(line)
        if wanted in ("", "..."):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in wanted.split("...")))
        found = next((i for i in range(at, len(actual)) if pattern.fullmatch(actual[i])), None)
        if found is None:
            missing.append(line)
        else:
            at = found + 1
    return missing


DELETED_BEFORE = {
    # What a user deleted in Goose before each example, as the README's comments say.
    0: ["0-1", "0-2", "0-3", "0-13", "0-14"],
    2: ["0-4", "0-5", "0-6", "0-7", "0-8", "0-9", "0-10", "0-11"],
}


def on_a_terminal(args: list[str], folder: Path) -> tuple[int, str]:
    """Exit code and output of the command on a wide terminal, as a user sees it: piped,
    the CLI keeps to 120 columns and rich would wrap the README's long lines."""
    main, side = pty.openpty()
    env = {**os.environ, "COLUMNS": "400", "LINES": "50", "NO_COLOR": "1", "TERM": "dumb"}
    child = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=folder, env=env, stdout=side, stderr=side
    )
    os.close(side)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal's last writer
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    code = child.wait(timeout=120)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace").replace("\r", ""))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox({name: free_port() for name in sandboxed()}) as box:
        yield box


def ops_yaml(box: Sandbox, folder: Path) -> Path:
    """The README's recipe: the shipped config.yaml with its pipelines replaced by the
    section's own, its URLs pointed at this sandbox's ports."""
    shipped = (ROOT / "config.yaml").read_text(encoding="utf-8")
    for name, spec in sandboxed().items():
        shipped = shipped.replace(f"127.0.0.1:{spec.port}", box.url(name).removeprefix("http://"))
    block = re.search(r"```yaml\n(pipelines:\n.*?)```", operating_section(), flags=re.S)
    assert block is not None
    path = folder / "ops.yaml"
    path.write_text(shipped[: shipped.index("\npipelines:")] + "\n" + block[1], encoding="utf-8")
    return path


def test_the_operating_examples_run_as_shown(sandbox: Sandbox, tmp_path: Path) -> None:
    ops_yaml(sandbox, tmp_path)
    shown = list(examples(operating_section()))
    # The plan, the guard's story and the dead letters; the malformed and damaged-store
    # examples need a store made for them and are covered by their own tests.
    story = shown[
        : next(n for n, (c, _) in enumerate(shown) if c.startswith("syncengine dlq list")) + 1
    ]
    assert [c.split()[1] for c, _ in story[:3]] == ["plan", "run", "run"], story
    for n, (command, lines) in enumerate(story):
        for key in DELETED_BEFORE.get(n, []):
            httpx.post(
                f"{sandbox.url('goose')}/_admin/delete", json={"table": "CON_TRO", "ids": [key]}
            ).raise_for_status()
        code, printed = on_a_terminal(["syncengine", *shlex.split(command)[1:]], tmp_path)
        refused = any(line.startswith("error:") for line in lines)
        assert code == (2 if refused else 0), f"{command}\n{printed}"
        assert missing_lines(lines, printed) == [], f"{command}\n{printed}"
